#!/bin/sh
# Harbor's components read their passwords from the environment only: export
# them from the Docker secrets each container has, then run the image's own
# entrypoint ("$@"). Missing secrets are skipped (not every component gets all).
set -e
s() { [ -r "/run/secrets/$1" ] && cat "/run/secrets/$1" | tr -d '\n' || true; }
vk="$(s valkey_password)"
export POSTGRESQL_PASSWORD="$(s harbor_db_password)"
export CORE_SECRET="$(s harbor_core_secret)"
export JOBSERVICE_SECRET="$(s harbor_jobservice_secret)"
export REGISTRY_CREDENTIAL_PASSWORD="$(s harbor_registry_password)"
export HARBOR_ADMIN_PASSWORD="$(s harbor_admin_password)"
export REGISTRY_HTTP_SECRET="$(s harbor_registry_http_secret)"
# CSRF key: exactly 32 characters
export CSRF_KEY="$(s harbor_csrf_key | cut -c1-32)"
# Valkey databases: 4 core, 5 jobservice, 6 registry cache (0-3 are others')
export _REDIS_URL_CORE="redis://:${vk}@mng-valkey:6379/4?idle_timeout_seconds=30"
export _REDIS_URL_REG="redis://:${vk}@mng-valkey:6379/6?idle_timeout_seconds=30"
export JOB_SERVICE_POOL_REDIS_URL="redis://:${vk}@mng-valkey:6379/5"
# the secret-key file of core must hold exactly 16 characters
if [ -r /run/secrets/harbor_secret_key ]; then
  cut -c1-16 /run/secrets/harbor_secret_key | tr -d '\n' > /tmp/harbor-key
  export KEY_PATH=/tmp/harbor-key
fi
exec "$@"
