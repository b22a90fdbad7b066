# Sourced once by the image's entrypoint when a node initialises an empty
# data directory (on galera-1 this becomes the cluster's data; joiners
# replace theirs by SST). Creates the SST user of mariabackup and the monitor
# user of ProxySQL; passwords from Docker secrets.
sst_password="$(< /run/secrets/galera_sst_password)"
monitor_password="$(< /run/secrets/proxysql_monitor_password)"
docker_process_sql --database=mysql <<SQL
CREATE USER IF NOT EXISTS 'mariabackup'@'localhost' IDENTIFIED BY '${sst_password}';
GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR, REPLICA MONITOR ON *.* TO 'mariabackup'@'localhost';
CREATE USER IF NOT EXISTS 'proxysql_monitor'@'%' IDENTIFIED BY '${monitor_password}';
GRANT USAGE, REPLICA MONITOR ON *.* TO 'proxysql_monitor'@'%';
SQL
