#!/bin/bash
# A compact port of the official mariadb image's docker-entrypoint.sh
# (https://github.com/MariaDB/mariadb-docker), for Debian's MariaDB 10.11.
#   MARIADB_ROOT_PASSWORD / _FILE / _HASH, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD,
#   MARIADB_RANDOM_ROOT_PASSWORD, MARIADB_ROOT_HOST (default %),
#   MARIADB_DATABASE, MARIADB_USER, MARIADB_PASSWORD / _FILE / _HASH,
#   MARIADB_INITDB_SKIP_TZINFO (each also as MYSQL_*), and
#   /docker-entrypoint-initdb.d/*.sh (run if executable, else sourced, so
#   they can call docker_process_sql), *.sql, *.sql.gz, *.sql.xz: run once,
#   when the data directory has no system database, against a temporary
#   socket-only server with wsrep off; then `exec mariadbd` as mysql (999).
# Secrets are never printed: not in notes, nor in the errors (the server's
# arguments may carry --wsrep-sst-auth).
set -eo pipefail
shopt -s nullglob

mysql_log() { local type="$1"; shift; printf '%s [%s] [Entrypoint]: %s\n' "$(date --rfc-3339=seconds)" "$type" "$*"; }
mysql_note() { mysql_log Note "$@"; }
mysql_warn() { mysql_log Warn "$@" >&2; }
mysql_error() { mysql_log ERROR "$@" >&2; exit 1; }

file_env() { # file_env VAR [default]: VAR or VAR_FILE
  local var="$1" fileVar="${1}_FILE" def="${2:-}" val
  if [ "${!var:-}" ] && [ "${!fileVar:-}" ]; then
    mysql_error "Both $var and $fileVar are set (but are exclusive)"
  fi
  val="$def"
  if [ "${!var:-}" ]; then val="${!var}"; elif [ "${!fileVar:-}" ]; then val="$(< "${!fileVar}")"; fi
  export "$var"="$val"; unset "$fileVar"
}

maria_file_env() { # MYSQL_X and MARIADB_X (either, or their _FILE), made the same
  local var="$1" maria="MARIADB_${1#MYSQL_}"; shift
  file_env "$var" "$@"
  file_env "$maria" "${!var}"
  if [ "${!maria:-}" ]; then export "$var"="${!maria}"; fi
}

is_sourced() {
  [ "${#FUNCNAME[@]}" -ge 2 ] && [ "${FUNCNAME[0]}" = is_sourced ] && [ "${FUNCNAME[1]}" = source ]
}

# the server's effective value of a setting (defaults included)
mysql_get_config() {
  local conf="$1"; shift
  "$@" --verbose --help 2>/dev/null \
    | awk -v conf="$conf" '$1 == conf && /^[^ \t]/ { sub(/^[^ \t]+[ \t]+/, ""); print; exit }'
}

mysql_check_config() {
  local errors
  if ! errors="$("$@" --verbose --help 2>&1 >/dev/null)"; then
    # not the command line: it may hold a password
    mysql_error $'mariadbd failed while checking its configuration:\n\t'"$errors"
  fi
}

docker_setup_env() {
  declare -g DATADIR SOCKET PORT DATABASE_ALREADY_EXISTS
  DATADIR="$(mysql_get_config datadir "$@")"
  SOCKET="$(mysql_get_config socket "$@")"
  PORT="$(mysql_get_config port "$@")"
  maria_file_env MYSQL_ROOT_HOST '%'
  maria_file_env MYSQL_DATABASE
  maria_file_env MYSQL_USER
  maria_file_env MYSQL_PASSWORD
  maria_file_env MYSQL_ROOT_PASSWORD
  file_env MARIADB_PASSWORD_HASH
  file_env MARIADB_ROOT_PASSWORD_HASH
  : "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:=${MYSQL_ALLOW_EMPTY_PASSWORD:-}}"
  : "${MARIADB_RANDOM_ROOT_PASSWORD:=${MYSQL_RANDOM_ROOT_PASSWORD:-}}"
  : "${MARIADB_INITDB_SKIP_TZINFO:=${MYSQL_INITDB_SKIP_TZINFO:-}}"
  export MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MARIADB_RANDOM_ROOT_PASSWORD MARIADB_INITDB_SKIP_TZINFO
  DATABASE_ALREADY_EXISTS=
  if [ -d "$DATADIR/mysql" ]; then DATABASE_ALREADY_EXISTS=true; fi
}

docker_create_db_directories() {
  mkdir -p "$DATADIR"
  if [ "$(id -u)" = 0 ]; then
    find "$DATADIR" \! -user mysql \( -exec chown mysql: '{}' + -o -true \)
    if [ "${SOCKET:0:1}" != @ ]; then
      mkdir -p "${SOCKET%/*}"
      find "${SOCKET%/*}" -maxdepth 0 \! -user mysql \( -exec chown mysql: '{}' \; -o -true \)
    fi
  fi
}

docker_verify_minimum_env() {
  if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ROOT_PASSWORD_HASH" ] \
     && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] && [ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
    mysql_error $'Database is uninitialized and password option is not specified\n\tYou need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD_HASH, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD'
  fi
  if [ -n "$MARIADB_PASSWORD" ] && [ -n "$MARIADB_PASSWORD_HASH" ]; then
    mysql_error "Cannot specify MARIADB_PASSWORD_HASH and MARIADB_PASSWORD option."
  fi
}

random_password() { # 32 characters that need no escaping anywhere
  LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32
}

docker_exec_client() {
  if [ -n "$MYSQL_DATABASE" ]; then set -- --database="$MYSQL_DATABASE" "$@"; fi
  mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" "$@"
}

# docker_process_sql [--dont-use-mysql-root-password] [client args] < SQL
docker_process_sql() {
  if [ "$1" = --dont-use-mysql-root-password ]; then
    shift; MYSQL_PWD='' docker_exec_client "$@"
  else
    MYSQL_PWD=$MARIADB_ROOT_PASSWORD docker_exec_client "$@"
  fi
}

docker_sql_escape_string_literal() { # backslashes, newlines and quotes
  local nl=$'\n' s="${1//\\/\\\\}"
  s="${s//$nl/\\n}"
  echo "${s//\'/\\\'}"
}

docker_temp_server_start() {
  "$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --wsrep_on=OFF \
    --expire-logs-days=0 --skip-slave-start --loose-innodb_buffer_pool_load_at_startup=0 &
  declare -g MARIADB_PID=$!
  mysql_note "Waiting for server startup"
  local extra=() i
  if [ -z "$DATABASE_ALREADY_EXISTS" ]; then extra+=(--dont-use-mysql-root-password); fi
  for i in {30..0}; do
    if docker_process_sql "${extra[@]}" --database=mysql <<<'SELECT 1' &>/dev/null; then break; fi
    sleep 1
  done
  if [ "$i" = 0 ]; then mysql_error "Unable to start server."; fi
}

docker_temp_server_stop() { kill "$MARIADB_PID"; wait "$MARIADB_PID"; }

docker_init_database_dir() {
  mysql_note "Initializing database files"
  local args=() a
  # "other options are passed to mariadbd" (those without blanks)
  for a in "${@:2}"; do [[ "$a" =~ [[:space:]] ]] || args+=("$a"); done
  mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal "${args[@]}" \
    --cross-bootstrap --skip-test-db --old-mode='UTF8_IS_UTF8MB3' \
    --default-time-zone=SYSTEM --enforce-storage-engine= --skip-log-bin --expire-logs-days=0 \
    --loose-innodb_buffer_pool_load_at_startup=0 --loose-innodb_buffer_pool_dump_at_shutdown=0
  mysql_note "Database files initialized"
}

healthcheck_users() { # SQL for healthcheck@{127.0.0.1,::1,localhost} + its client file
  local pass host; pass="$(random_password)"
  for host in 127.0.0.1 ::1 localhost; do
    echo "CREATE USER IF NOT EXISTS healthcheck@'$host' IDENTIFIED BY '$pass';"
    echo "SET PASSWORD FOR healthcheck@'$host' = PASSWORD('$pass');"
    echo "GRANT USAGE ON *.* TO healthcheck@'$host';"
  done
  (umask 0077; printf '[mariadb-client]\nport=%s\nsocket=%s\nuser=healthcheck\npassword=%s\n' \
     "$PORT" "$SOCKET" "$pass" > "$DATADIR/.my-healthcheck.cnf")
}

docker_setup_db() {
  if [ -z "$MARIADB_INITDB_SKIP_TZINFO" ]; then
    mariadb-tzinfo-to-sql --skip-write-binlog /usr/share/zoneinfo 2>/dev/null \
      | docker_process_sql --dont-use-mysql-root-password --database=mysql
  fi
  if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
    MARIADB_ROOT_PASSWORD="$(random_password)"
    export MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD="$MARIADB_ROOT_PASSWORD"
    mysql_note "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
  fi
  local rootPass="" rootCreate="" rootLocal="" createDb="" createUser="" grants="" hc
  [ -z "$MARIADB_ROOT_PASSWORD" ] || rootPass="$(docker_sql_escape_string_literal "$MARIADB_ROOT_PASSWORD")"
  if [ -n "$MARIADB_ROOT_HOST" ] && [ "$MARIADB_ROOT_HOST" != localhost ]; then
    local ident="IDENTIFIED BY '$rootPass'"
    [ -z "$MARIADB_ROOT_PASSWORD_HASH" ] || ident="IDENTIFIED BY PASSWORD '$MARIADB_ROOT_PASSWORD_HASH'"
    rootCreate="CREATE USER 'root'@'$MARIADB_ROOT_HOST' $ident;
GRANT ALL ON *.* TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;
GRANT PROXY ON ''@'%' TO 'root'@'$MARIADB_ROOT_HOST' WITH GRANT OPTION;"
  fi
  [ -n "$MARIADB_ROOT_PASSWORD_HASH" ] || rootLocal="SET PASSWORD FOR 'root'@'localhost' = PASSWORD('$rootPass');"
  hc="$(healthcheck_users)"
  if [ -n "$MARIADB_DATABASE" ]; then
    mysql_note "Creating database $MARIADB_DATABASE"
    createDb="CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;"
  fi
  if [ -n "$MARIADB_USER" ] && { [ -n "$MARIADB_PASSWORD" ] || [ -n "$MARIADB_PASSWORD_HASH" ]; }; then
    mysql_note "Creating user $MARIADB_USER"
    if [ -n "$MARIADB_PASSWORD_HASH" ]; then
      createUser="CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY PASSWORD '$MARIADB_PASSWORD_HASH';"
    else
      createUser="CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$(docker_sql_escape_string_literal "$MARIADB_PASSWORD")';"
    fi
    if [ -n "$MARIADB_DATABASE" ]; then
      mysql_note "Giving user $MARIADB_USER access to schema $MARIADB_DATABASE"
      grants="GRANT ALL ON \`${MARIADB_DATABASE//_/\\_}\`.* TO '$MARIADB_USER'@'%';"
    fi
  fi
  mysql_note "Securing system users (equivalent to running mysql_secure_installation)"
  docker_process_sql --dont-use-mysql-root-password --database=mysql --binary-mode <<-EOSQL
	SET @orig_sql_log_bin = @@SESSION.SQL_LOG_BIN;
	SET @@SESSION.SQL_LOG_BIN = 0;
	SET @@SESSION.SQL_MODE = REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
	DROP USER IF EXISTS root@'127.0.0.1', root@'::1';
	EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\'', @@hostname, '\'');
	${rootLocal}
	${rootCreate}
	${hc}
	SET @@SESSION.SQL_LOG_BIN = @orig_sql_log_bin;
	${createDb}
	${createUser}
	${grants}
	EOSQL
}

docker_process_init_files() {
  echo
  local f
  for f; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then mysql_note "$0: running $f"; "$f"
        else mysql_note "$0: sourcing $f"; . "$f"; fi ;;
      *.sql)    mysql_note "$0: running $f"; docker_process_sql < "$f"; echo ;;
      *.sql.gz) mysql_note "$0: running $f"; gunzip -c "$f" | docker_process_sql; echo ;;
      *.sql.xz) mysql_note "$0: running $f"; xzcat "$f" | docker_process_sql; echo ;;
      *)        mysql_warn "$0: ignoring $f" ;;
    esac
    echo
  done
}

docker_mariadb_init() {
  ls /docker-entrypoint-initdb.d/ > /dev/null
  docker_init_database_dir "$@"
  mysql_note "Starting temporary server"
  docker_temp_server_start "$@"
  mysql_note "Temporary server started."
  docker_setup_db
  docker_process_init_files /docker-entrypoint-initdb.d/*
  if [ -n "$MARIADB_ROOT_PASSWORD_HASH" ]; then
    docker_process_sql --dont-use-mysql-root-password --binary-mode <<-EOSQL
	SET @@SESSION.SQL_LOG_BIN = 0;
	SET PASSWORD FOR 'root'@'localhost' = '${MARIADB_ROOT_PASSWORD_HASH}';
	EOSQL
  fi
  mysql_note "Stopping temporary server"
  docker_temp_server_stop
  mysql_note "Temporary server stopped"
  echo
  mysql_note "MariaDB init process done. Ready for start up."
  echo
}

mysql_want_help() {
  local a
  for a; do case "$a" in -'?'|--help|--print-defaults|-V|--version) return 0 ;; esac; done
  return 1
}

_main() {
  if [ "${1:0:1}" = - ]; then set -- mariadbd "$@"; fi
  if { [ "$1" = mariadbd ] || [ "$1" = mysqld ]; } && ! mysql_want_help "$@"; then
    mysql_note "Entrypoint script for MariaDB Server $(mariadbd --version | awk '{print $3}') started."
    mysql_check_config "$@"
    docker_setup_env "$@"
    docker_create_db_directories
    if [ "$(id -u)" = 0 ]; then
      mysql_note "Switching to dedicated user 'mysql'"
      exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
      docker_verify_minimum_env
      docker_mariadb_init "$@"
    fi
  fi
  exec "$@"
}

if ! is_sourced; then _main "$@"; fi
