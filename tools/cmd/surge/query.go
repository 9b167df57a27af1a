package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

func query(args []string) error {
	fs := flag.NewFlagSet("query", flag.ContinueOnError)
	dir := fs.String("dir", ".surge", "data `folder` of the running local stack")
	server := fs.Int("server", 0, "ClickHouse server index to ask (events answers for all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sql := strings.TrimSpace(strings.Join(fs.Args(), " "))
	if sql == "" {
		return fmt.Errorf(`give the SQL, for example: surge query "SELECT count() FROM surge.events"`)
	}
	data, err := os.ReadFile(filepath.Join(*dir, stackFile))
	if err != nil {
		return fmt.Errorf("no local stack is running (start one with `go tool task up`): %w", err)
	}
	var info stackInfo
	if err := json.Unmarshal(data, &info); err != nil {
		return fmt.Errorf("read %s: %w", stackFile, err)
	}
	if *server < 0 || *server >= len(info.HTTP) {
		return fmt.Errorf("server must be 0 to %d", len(info.HTTP)-1)
	}
	u := "http://" + info.HTTP[*server] + "/?default_format=PrettyCompactMonoBlock&database=" + url.QueryEscape(info.Database)
	resp, err := http.Post(u, "text/plain", strings.NewReader(sql))
	if err != nil {
		return fmt.Errorf("query clickhouse: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("clickhouse answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	_, err = os.Stdout.Write(body)
	return err
}
