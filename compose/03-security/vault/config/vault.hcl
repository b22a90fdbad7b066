# Vault server configuration (03-security/vault), mounted read-only at
# /vault/config; the image's entrypoint starts `vault server -config=/vault/config`.
# Integrated storage (Raft): no Consul. One node here; for HA add nodes with
# their own node_id and a retry_join block pointing at the others.

ui            = true
disable_mlock = true   # recommended with integrated storage; no IPC_LOCK needed

storage "raft" {
  path    = "/vault/file"
  node_id = "vault-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  # TLS ends at Traefik; traffic on infra_net is plain HTTP
  tls_disable     = true
  telemetry {
    unauthenticated_metrics_access = true
  }
}

api_addr     = "http://vault:8200"
cluster_addr = "http://vault:8201"

telemetry {
  prometheus_retention_time = "24h"
  disable_hostname          = true
}
