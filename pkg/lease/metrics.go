package lease

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// ExportInstance publishes, on a service's /metrics, the id this process
// writes into the lease bucket:
// surge_<service>_lease_instance_info{instance_id="<id>"} 1. A tool that
// reads a lease (surge status) maps its holder to the process's admin
// endpoint by it.
func ExportInstance(reg prometheus.Registerer, service, instance string) {
	promauto.With(reg).NewGauge(prometheus.GaugeOpts{
		Name:        "surge_" + service + "_lease_instance_info",
		Help:        "The id this instance writes into the lease bucket (SURGE_LEASES) for the shards it holds; always 1.",
		ConstLabels: prometheus.Labels{"instance_id": instance},
	}).Set(1)
}
