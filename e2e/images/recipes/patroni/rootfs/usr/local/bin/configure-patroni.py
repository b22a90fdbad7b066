"""Writes Patroni's configuration from Spilo's variables (what launch.sh
needs), then merges SPILO_CONFIGURATION over it, as Spilo does."""
import os
import socket
import sys

import yaml

env = os.environ
name = socket.gethostname()
scope = env.get("SCOPE", "pg-cluster")
pgroot = env.get("PGROOT", "/home/postgres/pgdata/pgroot")
hosts = [h.strip().strip('"').strip("'") for h in env.get("ETCD3_HOSTS", "etcd:2379").split(",") if h.strip()]
su, su_pw = env.get("PGUSER_SUPERUSER", "postgres"), env.get("PGPASSWORD_SUPERUSER", "postgres")
rep, rep_pw = env.get("PGUSER_STANDBY", "standby"), env.get("PGPASSWORD_STANDBY", "standby")
admin, admin_pw = env.get("PGUSER_ADMIN", "admin"), env.get("PGPASSWORD_ADMIN", "admin")

conf = {
    "scope": scope,
    "name": name,
    "restapi": {"listen": "0.0.0.0:8008", "connect_address": f"{name}:8008"},
    "etcd3": {"hosts": hosts},
    "bootstrap": {
        "dcs": {
            "ttl": 30,
            "loop_wait": 10,
            "retry_timeout": 10,
            "maximum_lag_on_failover": 33554432,
            "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": {"wal_level": "replica", "hot_standby": "on", "wal_log_hints": "on"}},
        },
        "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        "users": {admin: {"password": admin_pw, "options": ["createrole", "createdb"]}},
    },
    "postgresql": {
        "listen": "0.0.0.0:5432",
        "connect_address": f"{name}:5432",
        "data_dir": f"{pgroot}/data",
        "bin_dir": "/usr/lib/postgresql/15/bin",
        "pgpass": "/tmp/pgpass",
        "authentication": {
            "superuser": {"username": su, "password": su_pw},
            "replication": {"username": rep, "password": rep_pw},
        },
        "pg_hba": [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            f"host replication {rep} all scram-sha-256",
            "host all all all scram-sha-256",
        ],
        "parameters": {"unix_socket_directories": "/run/postgresql", "jit": "off"},
    },
    "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
}


def merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            merge(a[k], v)
        else:
            a[k] = v


extra = env.get("SPILO_CONFIGURATION", "").strip()
if extra:
    merge(conf, yaml.safe_load(extra) or {})
yaml.safe_dump(conf, sys.stdout, default_flow_style=False)
