"""meshbox init: programs a pod's iptables so its TCP traffic goes through the sidecar."""
