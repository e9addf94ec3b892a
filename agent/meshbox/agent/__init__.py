"""meshbox agent: the proxy container's entrypoint; runs the proxy and feeds it config from discovery."""
