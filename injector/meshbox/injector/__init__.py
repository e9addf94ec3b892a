"""meshbox injector: adds the init and proxy containers to workloads (kube-inject and the webhook)."""
