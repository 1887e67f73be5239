#!/bin/sh
# A cron job feeding Prometheus through node_exporter's textfile collector:
#   */15 * * * *  PATH=/usr/local/bin:/usr/bin:/bin /path/to/prometheus_cron.sh
# (cron's PATH is short: /usr/bin:/bin -- a vpp installed under /usr/local
# is not found there unless PATH says so; and the AZURE_* variables set.)
#
# vpp writes the metrics with --output: into a new file beside vpp.prom,
# flushed to disk and renamed over it, and only when the check ran (OK,
# WARNING or CRITICAL).  A run that fails -- vpp missing, Graph unreachable,
# the disk full, the job killed -- leaves the last good metrics in place;
# vpp_check_timestamp_seconds then ages, which is what to alert on.
set -eu
dir=${TEXTFILE_DIR:-/var/lib/prometheus/node-exporter}
status=0
vpp check --format prometheus --output "$dir/vpp.prom" || status=$?
# 0-2: the check ran (its OK/WARNING/CRITICAL is in vpp_check_status).
# 3 (UNKNOWN), 127 (no vpp) or anything else: a failed run, for cron's mail.
if [ "$status" -gt 2 ]; then
  echo "prometheus_cron.sh: vpp check failed (exit $status); $dir/vpp.prom left as it was" >&2
  exit 1
fi
