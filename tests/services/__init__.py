"""The deployment around the server: the Docker image, Prometheus, the Kubernetes manifests
(they need their services: scripts/ci-services.sh)."""
