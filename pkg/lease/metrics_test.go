package lease

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestExportInstance(t *testing.T) {
	reg := prometheus.NewRegistry()
	ExportInstance(reg, "sink", "vm-a62e63")
	want := `
# HELP surge_sink_lease_instance_info The id this instance writes into the lease bucket (SURGE_LEASES) for the shards it holds; always 1.
# TYPE surge_sink_lease_instance_info gauge
surge_sink_lease_instance_info{instance_id="vm-a62e63"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want)))
}
