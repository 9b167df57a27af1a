package stack

import (
	"context"
	"net/http"
	"time"
)

var probe = &http.Client{Timeout: time.Second}

// ready reports whether the admin server at addr answers /readyz with 200.
func ready(ctx context.Context, addr string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := probe.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
