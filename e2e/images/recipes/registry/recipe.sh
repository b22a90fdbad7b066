# The distribution registry 2.8 (Debian's docker-registry): the private
# registry of the pull tests (TLS, htpasswd), standing in for a user's own
# registry (Harbor's registry-photon is the same distribution code).
# Configured by REGISTRY_* environment variables (see e2e/tests/registry.rs).
TAG=infra-local/registry:2
PACKAGES="docker-registry"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV REGISTRY_HTTP_ADDR=:5000'
  'ENV REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry'
  'EXPOSE 5000'
  'VOLUME /var/lib/registry'
  'ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]'
)
