"""meshctl: the meshbox user CLI."""
