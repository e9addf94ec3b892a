"""meshbox discovery: the control plane that serves each proxy its config over gRPC."""
