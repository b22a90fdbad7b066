# The plain bookworm minbase root filesystem (for tests and ad-hoc use).
TAG=infra-local/debian:bookworm
PACKAGES=""
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV LANG=C.UTF-8'
  'CMD ["bash"]'
)
