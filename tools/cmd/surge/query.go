package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/surge-events/surge/tools/stack"
)

func query(args []string) error {
	flags := flag.NewFlagSet("query", flag.ContinueOnError)
	dir := flags.String("dir", ".surge", "data `folder` of the running local stack")
	server := flags.Int("server", 0, "ClickHouse server index to ask (events answers for all)")
	timeout := flags.Duration("timeout", time.Minute, "give up on an answer after this `long`")
	if err := flags.Parse(args); err != nil {
		return err
	}
	sql := strings.TrimSpace(strings.Join(flags.Args(), " "))
	if sql == "" {
		return fmt.Errorf(`give the SQL, for example: surge query "SELECT count() FROM surge.events"`)
	}
	info, err := stack.ReadInfo(*dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no local stack is running (start one with `go tool task up`): %w", err)
	}
	if err != nil {
		return err
	}
	if *server < 0 || *server >= len(info.HTTP) {
		return fmt.Errorf("server must be 0 to %d", len(info.HTTP)-1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	u := "http://" + info.HTTP[*server] + "/?default_format=PrettyCompactMonoBlock&database=" + url.QueryEscape(info.Database)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(sql))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("query clickhouse: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read clickhouse answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("clickhouse answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	_, err = os.Stdout.Write(body)
	return err
}
