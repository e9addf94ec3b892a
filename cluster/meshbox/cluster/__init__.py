"""The local cluster: Kubernetes-like pods and Services made of network namespaces on this machine."""
