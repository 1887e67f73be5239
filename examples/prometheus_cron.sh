#!/bin/sh
# A cron job feeding Prometheus through node_exporter's textfile collector:
#   */15 * * * *  /path/to/prometheus_cron.sh   (with the AZURE_* variables set)
# Write to a temporary file and rename it, so the collector never reads a
# half-written file.  vpp check's exit code says OK/WARNING/CRITICAL/UNKNOWN;
# here the metrics carry that (vpp_check_status), so any code is fine.
set -u
dir=${TEXTFILE_DIR:-/var/lib/prometheus/node-exporter}
vpp check --format prometheus > "$dir/vpp.prom.$$"
mv "$dir/vpp.prom.$$" "$dir/vpp.prom"
