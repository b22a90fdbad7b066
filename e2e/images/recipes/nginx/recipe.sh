# Stands in for nginx:1.x-alpine: nginx-light from bookworm (1.22) with the
# upstream layout (/etc/nginx/nginx.conf including conf.d/*.conf, logs to
# stdout/stderr, user nginx uid 101), the upstream entrypoint's templating
# (/etc/nginx/templates/*.template -> conf.d via envsubst) and busybox wget.
TAG=infra-local/nginx:1
PACKAGES="nginx-light gettext-base busybox"
STOPSIGNAL=SIGQUIT
CHANGES=(
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  'EXPOSE 80'
  'ENTRYPOINT ["/docker-entrypoint.sh"]'
  'CMD ["nginx", "-g", "daemon off;"]'
)
