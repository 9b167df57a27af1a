package ingest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// HeaderIdempotencyKey names the request header whose value becomes the
// JetStream message id, so a client retry within the duplicate window is
// stored once.
const HeaderIdempotencyKey = "Idempotency-Key"

// maxIdempotencyKeyLen bounds the key, which travels in every message id.
const maxIdempotencyKeyLen = 200

// admit takes the steps of every POST once its tenant is known: an
// in-flight slot (429 when none is free), the Idempotency-Key, the
// Content-Encoding and the body, read within the size limits. It returns
// the body and the key with the slot's release, to call once the request
// is answered; or the reply of the first step that failed, the slot
// already given back.
func (s *Service) admit(w http.ResponseWriter, r *http.Request) (body []byte, idemKey string, release func(), rep reply) {
	release, ok := s.acquire()
	if !ok {
		return nil, "", nil, reject(http.StatusTooManyRequests, reasonOverloaded, "too many requests in flight; retry later")
	}
	if idemKey, rep = idempotencyKey(r); rep.status == 0 {
		if gzipped, ok := bodyEncoding(r.Header.Get("Content-Encoding")); ok {
			body, rep = s.readBody(w, r, gzipped)
		} else {
			rep = reject(http.StatusUnsupportedMediaType, reasonMediaType, "Content-Encoding must be gzip or identity")
		}
	}
	if rep.status != 0 {
		release()
		return nil, "", nil, rep
	}
	return body, idemKey, release, reply{}
}

// acquire takes an in-flight slot, or says at once that none is free.
func (s *Service) acquire() (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
		s.metrics.inFlight.Inc()
		return func() {
			<-s.slots
			s.metrics.inFlight.Dec()
		}, true
	default:
		return nil, false
	}
}

// idempotencyKey returns the request's Idempotency-Key ("" when absent),
// or the 400 of an invalid one.
func idempotencyKey(r *http.Request) (string, reply) {
	key := r.Header.Get(HeaderIdempotencyKey)
	if _, present := r.Header[HeaderIdempotencyKey]; present && !validIdempotencyKey(key) {
		return "", reject(http.StatusBadRequest, reasonBadRequest,
			fmt.Sprintf("%s must be 1 to %d printable ASCII characters", HeaderIdempotencyKey, maxIdempotencyKeyLen))
	}
	return key, reply{}
}

// authenticate returns the request's tenant: the default one when no API
// keys are configured, else the one of its bearer key.
func (s *Service) authenticate(r *http.Request) (string, bool) {
	if len(s.tenants) == 0 {
		return s.cfg.Ingest.DefaultTenant, true
	}
	scheme, key, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return s.tenantOf(key)
}

// tenantOf returns the tenant of an API key.
func (s *Service) tenantOf(key string) (string, bool) {
	tenant, ok := s.tenants[sha256.Sum256([]byte(strings.TrimSpace(key)))]
	return tenant, ok
}

func validIdempotencyKey(k string) bool {
	if k == "" || len(k) > maxIdempotencyKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return false
		}
	}
	return true
}

func bodyEncoding(contentEncoding string) (gzipped, ok bool) {
	switch strings.ToLower(strings.TrimSpace(contentEncoding)) {
	case "", "identity":
		return false, true
	case "gzip", "x-gzip":
		return true, true
	}
	return false, false
}

// readBody reads the whole body, decompressing it, and rejects it once
// it passes MaxBodyBytes: both the bytes on the wire and the bytes after
// decompression are limited, so a small gzip bomb gets 413 after reading
// no more than the limit.
func (s *Service) readBody(w http.ResponseWriter, r *http.Request, gzipped bool) ([]byte, reply) {
	limit := s.cfg.Ingest.MaxBodyBytes
	var body io.Reader = http.MaxBytesReader(w, r.Body, limit)
	var buf bytes.Buffer
	if gzipped {
		zr, err := s.gzipReader(body)
		if err != nil {
			return nil, readReject(err, true, limit)
		}
		defer s.gzipReaders.Put(zr)
		body = http.MaxBytesReader(w, io.NopCloser(zr), limit)
	} else if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength, limit)) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, readReject(err, gzipped, limit)
	}
	return buf.Bytes(), reply{}
}

func (s *Service) gzipReader(r io.Reader) (*gzip.Reader, error) {
	if zr, ok := s.gzipReaders.Get().(*gzip.Reader); ok {
		if err := zr.Reset(r); err != nil {
			s.gzipReaders.Put(zr)
			return nil, err
		}
		return zr, nil
	}
	return gzip.NewReader(r)
}

func readReject(err error, gzipped bool, limit int64) reply {
	var tooLarge *http.MaxBytesError
	var netErr net.Error
	switch {
	case errors.As(err, &tooLarge):
		return reject(http.StatusRequestEntityTooLarge, reasonBodyTooLarge,
			fmt.Sprintf("body exceeds %d bytes (after decompression)", limit))
	case errors.As(err, &netErr) && netErr.Timeout():
		return reject(http.StatusRequestTimeout, reasonBadRequest, "timed out reading the body")
	case gzipped:
		return reject(http.StatusBadRequest, reasonBadGzip, "body is not valid gzip: "+err.Error())
	default:
		return reject(http.StatusBadRequest, reasonBadRequest, "read body: "+err.Error())
	}
}
