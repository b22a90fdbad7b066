#!/bin/bash
# Runs once, on the first initialisation of mng-pg's data directory, through
# the postgres image's /docker-entrypoint-initdb.d mechanism (the server is
# then reachable on its Unix socket only). Creates the databases and roles the
# other stacks use; every password comes from a Docker secret, none is written
# here. A .sh rather than a .sql file because SQL files cannot read secrets.
set -eo pipefail

secret() { # secret NAME -> contents of /run/secrets/NAME without trailing newline
  local f="/run/secrets/$1"
  if [ ! -r "$f" ]; then echo "init_users_dbs: secret $f is missing or unreadable" >&2; exit 1; fi
  printf '%s' "$(< "$f")"
}

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-postgres}" \
  -v keycloak_pw="$(secret keycloak_db_password)" \
  -v n8n_pw="$(secret n8n_db_password)" \
  -v exporter_pw="$(secret pg_exporter_password)" \
  -v airflow_pw="$(secret airflow_db_password)" \
  -v sonarqube_pw="$(secret sonarqube_db_password)" \
  -v terrakube_pw="$(secret terrakube_db_password)" \
  -v harbor_pw="$(secret harbor_db_password)" <<'EOSQL'
-- Keycloak (02-auth/keycloak)
CREATE ROLE keycloak LOGIN PASSWORD :'keycloak_pw';
CREATE DATABASE keycloak OWNER keycloak;
REVOKE ALL ON DATABASE keycloak FROM PUBLIC;

-- n8n (07-workflow/n8n)
CREATE ROLE n8n LOGIN PASSWORD :'n8n_pw';
CREATE DATABASE n8n OWNER n8n;
REVOKE ALL ON DATABASE n8n FROM PUBLIC;

-- Airflow (07-workflow/airflow, profile airflow)
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

-- SonarQube (09-tooling/sonarqube, profile sonarqube)
CREATE ROLE sonarqube LOGIN PASSWORD :'sonarqube_pw';
CREATE DATABASE sonarqube OWNER sonarqube;
REVOKE ALL ON DATABASE sonarqube FROM PUBLIC;

-- Terrakube (09-tooling/terrakube, profile terrakube)
CREATE ROLE terrakube LOGIN PASSWORD :'terrakube_pw';
CREATE DATABASE terrakube OWNER terrakube;
REVOKE ALL ON DATABASE terrakube FROM PUBLIC;

-- Harbor (09-tooling/harbor): its core keeps its data in "registry"
CREATE ROLE harbor LOGIN PASSWORD :'harbor_pw';
CREATE DATABASE registry OWNER harbor;
REVOKE ALL ON DATABASE registry FROM PUBLIC;

-- pg-exporter (06-observability): read-only monitoring role ("pg_" role names are reserved)
CREATE ROLE postgres_exporter LOGIN PASSWORD :'exporter_pw' CONNECTION LIMIT 5;
GRANT pg_monitor TO postgres_exporter;
EOSQL

echo "init_users_dbs: created roles/databases keycloak, n8n, airflow, sonarqube, terrakube, harbor (registry) and the postgres_exporter monitoring role"
