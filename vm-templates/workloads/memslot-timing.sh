#!/bin/sh
# An example `command` workload (see README, "Workloads"): runs in the booted test host, after the flash
# workload (whose VMM kpipe has copied to /tmp/flashvmm), and prints key=value lines kpipe reads as metrics.
#
# It times N flash cycles of the flash VMM with no reader vCPU (2N memslot updates, 3N expedited SRCU
# grace periods in a 6.1 host): the updater's own latency, without the reader's help or interference.
#   args: [CYCLES]   (default 400)
set -eu
cycles=${1:-400}
[ -x /tmp/flashvmm ] || { echo "no /tmp/flashvmm: this example needs the flash workload" >&2; exit 2; }
read -r start _ < /proc/uptime
/tmp/flashvmm --cycles "$cycles" --static-slots 0 --spinners 0 --timeout 600 > /tmp/memslot-timing.json
read -r end _ < /proc/uptime
cs=$(( ${end%.*}${end#*.} - ${start%.*}${start#*.} ))   # centiseconds, from /proc/uptime
echo "elapsed_ms=$(( cs * 10 ))"
echo "per_update_us=$(( cs * 10000 / (2 * cycles) ))"
echo "cycles=$cycles"
