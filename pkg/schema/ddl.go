package schema

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/surge-events/surge/pkg/batch"
)

var (
	validName    = regexp.MustCompile(`^p_[a-z0-9_]+$`)
	dateTimeType = regexp.MustCompile(`^DateTime(64)?(\(\s*([0-9])?\s*,?\s*('[A-Za-z_/+-]+')?\s*\))?$`)
)

// ValidName reports whether name may be a property column's name: p_ and
// then a-z, 0-9 and _, at most MaxNameLen bytes.
func ValidName(name string) bool {
	return len(name) <= MaxNameLen && validName.MatchString(name)
}

// DeclaredKind is the logical kind of a declared ClickHouse type: what the
// batcher coerces values to. Nullable() and LowCardinality() wrappers are
// looked through.
func DeclaredKind(chType string) (batch.Kind, error) {
	t := strings.TrimSpace(chType)
	for _, w := range []string{"Nullable(", "LowCardinality("} {
		if strings.HasPrefix(t, w) && strings.HasSuffix(t, ")") {
			t = strings.TrimSpace(t[len(w) : len(t)-1])
		}
	}
	if strings.HasPrefix(t, "Array(") && strings.HasSuffix(t, ")") {
		e, err := DeclaredKind(t[len("Array(") : len(t)-1])
		if err != nil || e.IsArray() || e == batch.DateTime {
			return 0, fmt.Errorf("%q: arrays of String, Int64, Float64 or Bool only", chType)
		}
		return batch.ArrayOf(e), nil
	}
	switch t {
	case "String":
		return batch.String, nil
	case "Int64":
		return batch.Int64, nil
	case "Float64":
		return batch.Float64, nil
	case "Bool", "UInt8":
		return batch.Bool, nil
	}
	if dateTimeType.MatchString(t) {
		return batch.DateTime, nil
	}
	return 0, fmt.Errorf("%q is not a type Surge fills: String, Int64, Float64, Bool, DateTime, DateTime64(p), LowCardinality(String) or Array of a scalar", chType)
}
