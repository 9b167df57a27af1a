package stack

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// InfoFile, in a running local stack's data folder, says where the stack
// listens: `surge up` writes it, `surge query` and `surge deadletter`
// read it.
const InfoFile = "stack.json"

// Info is what InfoFile holds.
type Info struct {
	IngestURL    string   `json:"ingest_url"`
	NATSURL      string   `json:"nats_url"`
	NATSUser     string   `json:"nats_user"`
	NATSPassword string   `json:"nats_password"`
	MQTTPort     int      `json:"mqtt_port,omitempty"`
	ClickHouse   []string `json:"clickhouse_native"`
	HTTP         []string `json:"clickhouse_http"`
	Database     string   `json:"database"`
	// Admin maps each service (ingest, partitioner, batcher, sink) to its
	// admin address: /metrics, /healthz, /readyz.
	Admin map[string]string `json:"admin"`
	// The fields below are set by `surge up --cluster` only.
	// IngestURLs are every ingest instance's base URL (IngestURL is the
	// first).
	IngestURLs []string `json:"ingest_urls,omitempty"`
	// ClickHouseReplicas lists each shard's replicas (native addresses).
	ClickHouseReplicas [][]string `json:"clickhouse_replicas,omitempty"`
	// ZooKeeper is the address ClickHouse coordinates through.
	ZooKeeper string `json:"zookeeper,omitempty"`
	// PIDs maps every process the cluster started to its id.
	PIDs map[string]int `json:"pids,omitempty"`
}

// Info describes where s listens.
func (s *Stack) Info() Info {
	info := Info{
		IngestURL: s.IngestURL, NATSURL: s.NATS.ClientURL(), NATSUser: s.NATSAuth.User, NATSPassword: s.NATSAuth.Password,
		MQTTPort: s.MQTTPort, ClickHouse: s.ClickHouse.Addrs(), Database: s.Database,
		Admin: map[string]string{},
	}
	for _, p := range s.Parts {
		info.Admin[p.Name] = p.AdminAddr
	}
	for _, srv := range s.ClickHouse.Servers {
		info.HTTP = append(info.HTTP, srv.HTTPAddr())
	}
	return info
}

// WriteInfo writes info to InfoFile in dir.
func WriteInfo(dir string, info Info) error {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", InfoFile, err)
	}
	if err := os.WriteFile(filepath.Join(dir, InfoFile), data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", InfoFile, err)
	}
	return nil
}

// ReadInfo reads InfoFile from dir. An error that errors.Is
// fs.ErrNotExist means no local stack runs there.
func ReadInfo(dir string) (Info, error) {
	var info Info
	data, err := os.ReadFile(filepath.Join(dir, InfoFile))
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("read %s: %w", InfoFile, err)
	}
	return info, nil
}

// RemoveInfo deletes InfoFile from dir once the stack has stopped.
func RemoveInfo(dir string) error {
	err := os.Remove(filepath.Join(dir, InfoFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
