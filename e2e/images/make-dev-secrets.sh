#!/usr/bin/env bash
# Create compose/secrets/<name> with a random value for every
# compose/secrets/<name>.example that has no real file yet (or only the
# example value, a placeholder written when a tool was missing). Never
# overwrites a real value.
#   e2e/images/make-dev-secrets.sh [SECRETS_DIR]
# SECRETS_DIR defaults to compose/secrets of this checkout; a Compose root
# (a folder whose secrets/ holds the *.example files) is accepted too.
# Most secrets get 32 random hex characters (safe in URLs, shell words, SQL
# strings, sed replacements and config files). Secrets with a required format
# (see the comments of their .example files and of the Compose files) get a
# value in that format; see gen() below. Secret values are never printed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-$HERE/../../compose/secrets}"
DIR="$(cd "$DIR" && pwd)"
if ! compgen -G "$DIR/*.example" >/dev/null && compgen -G "$DIR/secrets/*.example" >/dev/null; then
  DIR="$DIR/secrets"
fi
chmod 0700 "$DIR"
made=0 kept=0 warned=0

have() { command -v "$1" >/dev/null 2>&1; }
warn() { echo "WARNING: $*" >&2; warned=$((warned + 1)); }

# hex N: N random hex characters
hex() { local s; s="$(od -An -N"$(( ($1 + 1) / 2 ))" -tx1 /dev/urandom | tr -d ' \n')"; printf '%s' "${s:0:$1}"; }
# alnum N: N random characters from [A-Za-z0-9]
alnum() {
  local s=""
  while [ "${#s}" -lt "$1" ]; do
    s="$s$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')"
  done
  printf '%s' "${s:0:$1}"
}
# pick SET: one random character of SET
pick() { local set="$1" n; n="$(od -An -N2 -tu2 /dev/urandom | tr -d ' \n')"; printf '%s' "${set:$(( n % ${#set} )):1}"; }
# b64 N: base64 of N random bytes, on one line
b64() {
  if have base64; then head -c "$1" /dev/urandom | base64 | tr -d '\n'
  elif have openssl; then openssl rand -base64 "$1" | tr -d '\n'
  else python3 -c 'import base64,os,sys; sys.stdout.write(base64.b64encode(os.urandom(int(sys.argv[1]))).decode())' "$1"
  fi
}

# put NAME: write stdin to $DIR/NAME atomically, mode 0644 (read by non-root
# container users; the directory is 0700)
put() {
  local f="$DIR/$1"
  (umask 0022; cat > "$f.tmp") && mv "$f.tmp" "$f"
  chmod 0644 "$f"
}
# from_example NAME: fall back to the .example value (a placeholder that the
# service will reject) so that the file exists for Compose
from_example() { put "$1" < "$DIR/$1.example"; }

# gen NAME: write a fresh value for NAME; sets placeholder=1 when only the
# example value could be used
gen() {
  local name="$1"
  case "$name" in
    opensearch_admin_password)
      # OpenSearch's initial admin password: 8+ characters with an upper-case
      # letter, a lower-case letter, a digit and a special character (and
      # "strong"); the special characters used are safe in shells and URLs
      { alnum 20; pick 'ABCDEFGHJKLMNPQRSTUVWXYZ'; pick 'abcdefghijkmnpqrstuvwxyz'
        pick '23456789'; pick '-_.'; alnum 4; echo; } | put "$name" ;;
    terrakube_pat_secret | terrakube_internal_secret)
      # Terrakube: base64 of at least 32 bytes (`openssl rand -base64 32`)
      { b64 32; echo; } | put "$name" ;;
    oauth2_proxy_cookie_secret)
      # oauth2-proxy: exactly 16, 24 or 32 bytes; 32 here
      { alnum 32; echo; } | put "$name" ;;
    harbor_csrf_key)
      # Harbor core uses exactly 32 characters (secrets-env.sh cuts to 32)
      { alnum 32; echo; } | put "$name" ;;
    harbor_secret_key)
      # Harbor core's secret-key file: exactly 16 characters (cut to 16)
      { alnum 16; echo; } | put "$name" ;;
    harbor_token_key)
      # RSA private key signing the registry tokens
      if have openssl; then
        local f="$DIR/$name"
        if ! (umask 0077; openssl genrsa 4096 > "$f.tmp" 2>/dev/null); then
          rm -f "$f.tmp"; echo "ERROR: openssl genrsa failed for $name" >&2; exit 1
        fi
        mv "$f.tmp" "$f"
        chmod 0644 "$f"
      else
        from_example "$name"
        warn "$name: openssl not found; wrote the example value, which is not a key. Replace it: openssl genrsa -out $DIR/$name 4096"
        placeholder=1
      fi ;;
    harbor_registry_htpasswd)
      # bcrypt htpasswd line of user harbor_registry_user with the password in
      # harbor_registry_password (created first when missing)
      ensure harbor_registry_password
      local pw line=""
      pw="$(< "$DIR/harbor_registry_password")"
      if have htpasswd; then
        line="$(htpasswd -nbB harbor_registry_user "$pw" | sed '/^$/d')"
      elif have python3 && python3 -c 'import bcrypt' 2>/dev/null; then
        line="$(printf '%s' "$pw" | python3 -c 'import bcrypt,sys; pw=sys.stdin.buffer.read(); sys.stdout.write("harbor_registry_user:" + bcrypt.hashpw(pw, bcrypt.gensalt(10)).decode())')"
      fi
      pw=""
      if [ -n "$line" ]; then
        printf '%s\n' "$line" | put "$name"
      else
        from_example "$name"
        warn "$name: neither htpasswd nor python3's bcrypt module found; wrote the example value, which is not a valid hash. Replace it: htpasswd -nbB harbor_registry_user \"\$(cat $DIR/harbor_registry_password)\" > $DIR/$name"
        placeholder=1
      fi ;;
    *)
      # 32 hex characters: safe in URLs, shell words and config files
      { hex 32; echo; } | put "$name" ;;
  esac
}

# check NAME: warn (never fix, never print the value) when an existing file
# does not have the format its secret needs, e.g. one made by an older
# version of this script; delete it and rerun to get a valid one
check() {
  local name="$1" f="$DIR/$1" v why=""
  case "$name" in
    opensearch_admin_password)
      v="$(< "$f")"
      if [ "${#v}" -lt 8 ] || ! [[ "$v" =~ [A-Z] && "$v" =~ [a-z] && "$v" =~ [0-9] && "$v" =~ [^A-Za-z0-9] ]]; then
        why="needs 8+ characters with upper, lower, digit and special"
      fi ;;
    terrakube_pat_secret | terrakube_internal_secret)
      v="$(< "$f")"
      # 32 bytes are 43 base64 characters, 44 with the padding
      if ! [[ "$v" =~ ^[A-Za-z0-9+/]+=*$ ]] || [ "${#v}" -lt 43 ]; then
        why="needs base64 of at least 32 bytes"
      fi ;;
    oauth2_proxy_cookie_secret)
      v="$(< "$f")"
      case "${#v}" in 16 | 24 | 32 | 44) ;; *) why="needs exactly 16, 24 or 32 bytes (or their base64)" ;; esac ;;
    harbor_csrf_key)
      v="$(< "$f")"; [ "${#v}" -ge 32 ] || why="needs at least 32 characters" ;;
    harbor_secret_key)
      v="$(< "$f")"; [ "${#v}" -ge 16 ] || why="needs at least 16 characters" ;;
    harbor_token_key)
      if ! grep -q -- '-----BEGIN .*PRIVATE KEY-----' "$f"; then
        why="needs a PEM RSA private key"
      elif have openssl && ! openssl pkey -in "$f" -noout >/dev/null 2>&1; then
        why="needs a PEM RSA private key (openssl cannot read it)"
      fi ;;
    harbor_registry_htpasswd)
      if ! grep -qE '^harbor_registry_user:\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$' "$f"; then
        why="needs a bcrypt htpasswd line for harbor_registry_user"
      elif [ -e "$DIR/harbor_registry_password" ] && have python3 && python3 -c 'import bcrypt' 2>/dev/null \
        && ! python3 - "$DIR" <<'PY'
import bcrypt, sys
d = sys.argv[1]
pw = open(d + "/harbor_registry_password", "rb").read().rstrip(b"\r\n")
for line in open(d + "/harbor_registry_htpasswd", "rb").read().splitlines():
    if line.startswith(b"harbor_registry_user:"):
        h = line.split(b":", 1)[1].strip()
        try:
            ok = bcrypt.checkpw(pw, h.replace(b"$2y$", b"$2b$", 1))
        except ValueError:
            ok = False
        sys.exit(0 if ok else 1)
sys.exit(1)
PY
      then
        why="does not match harbor_registry_password"
      fi ;;
  esac
  v=""
  if [ -z "$why" ] && cmp -s "$f" "$f.example"; then why="still holds the example value"; fi
  [ -z "$why" ] || warn "$name exists but $why; delete it and rerun to regenerate"
}

# ensure NAME: create $DIR/NAME unless it exists
seen=" "
ensure() {
  local name="$1"
  case "$seen" in *" $name "*) return 0 ;; esac
  seen="$seen$name "
  # A file still holding its example value is a placeholder this script
  # wrote when a tool was missing (htpasswd, openssl): made again now, so
  # installing the tool later is enough.
  if [ -e "$DIR/$name" ] && ! cmp -s "$DIR/$name" "$DIR/$name.example"; then
    kept=$((kept + 1)); check "$name"; return 0
  fi
  rm -f "$DIR/$name"
  placeholder=0
  gen "$name"
  if [ "$placeholder" = 1 ]; then echo "created $name (example value, see the warning)"; else echo "created $name"; fi
  made=$((made + 1))
}

for ex in "$DIR"/*.example; do
  [ -e "$ex" ] || continue
  name="$(basename "${ex%.example}")"
  ensure "$name"
done

echo "secrets in $DIR: $made created, $kept kept$([ "$warned" = 0 ] || echo ", $warned warning(s)")"
