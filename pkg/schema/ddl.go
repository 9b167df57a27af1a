package schema

import (
	"fmt"
	"regexp"
	"strconv"
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

// ValidColumn reports whether name may be a typed column's name: a
// property column's (ValidName) or a promoted Segment context field's
// (context_ and then a-z, 0-9 and _). Only such names reach DDL, unquoted.
func ValidColumn(name string) bool { return validColumn(name) }

// DeclaredKind is the logical kind of a declared ClickHouse type: what the
// batcher coerces values to. Nullable() and LowCardinality() wrappers are
// looked through, in any order (LowCardinality(Nullable(String)) is how
// current servers spell a nullable low-cardinality string).
func DeclaredKind(chType string) (batch.Kind, error) {
	t := unwrap(chType)
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

// unwrap is chType without its Nullable() and LowCardinality() wrappers.
func unwrap(chType string) string {
	t := strings.TrimSpace(chType)
	for {
		inner, ok := strings.CutPrefix(t, "Nullable(")
		if !ok {
			inner, ok = strings.CutPrefix(t, "LowCardinality(")
		}
		if !ok || !strings.HasSuffix(inner, ")") {
			return t
		}
		t = strings.TrimSpace(inner[:len(inner)-1])
	}
}

// Server is a ClickHouse server's release, as far as the DDL Surge writes
// depends on it: the major and minor of SELECT version() ("18.16.1" is
// 18.16, "25.3.2.39" is 25.3). The zero Server is older than any release
// and has none of the capabilities.
type Server struct{ Major, Minor int }

// ParseServer reads the answer of SELECT version().
func ParseServer(version string) (Server, error) {
	parts := strings.SplitN(strings.TrimSpace(version), ".", 3)
	if len(parts) < 2 {
		return Server{}, fmt.Errorf("clickhouse version %q: want major.minor[.patch...]", version)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major < 1 || minor < 0 {
		return Server{}, fmt.Errorf("clickhouse version %q: want major.minor[.patch...]", version)
	}
	return Server{Major: major, Minor: minor}, nil
}

func (s Server) String() string { return fmt.Sprintf("%d.%d", s.Major, s.Minor) }

// AtLeast reports whether s is release major.minor or later.
func (s Server) AtLeast(major, minor int) bool {
	return s.Major > major || (s.Major == major && s.Minor >= minor)
}

// The releases that brought what the DDL depends on, from ClickHouse's
// changelog (docs/en/whats-new/changelog) unless said otherwise.
//
// AddColumnIfNotExists: ALTER TABLE ... ADD COLUMN IF NOT EXISTS, 19.1.6
// (#3900); 18.16 answers a syntax error (Code 62).
func (s Server) AddColumnIfNotExists() bool { return s.AtLeast(19, 1) }

// ColumnComments reports whether ADD COLUMN ... COMMENT keeps the comment.
// 18.16 parses the clause and drops it (measured: system.columns shows an
// empty comment for every engine); the release that started keeping it is
// not in the changelog, so 19.1, where the ALTER column commands were
// reworked for IF [NOT] EXISTS, is a guess. An older server just gets no
// comment. (COMMENT COLUMN is never used: on 18.16 it dropped the column
// of a ReplicatedMergeTree table, measured.)
func (s Server) ColumnComments() bool { return s.AtLeast(19, 1) }

// LowCardinality reports whether LowCardinality types need no setting:
// 19.3.3 removed allow_experimental_low_cardinality_type (#4323).
func (s Server) LowCardinality() bool { return s.AtLeast(19, 3) }

// DateTime64 reports whether the DateTime64(precision) type exists: 20.1.2.4
// (#7170).
func (s Server) DateTime64() bool { return s.AtLeast(20, 1) }

// Bool reports whether the Bool type exists: 21.12 (its release notes);
// before, a bool is a UInt8.
func (s Server) Bool() bool { return s.AtLeast(21, 12) }

// ReplicationAlterColumnsTimeout reports whether a column ALTER of a
// Replicated table waits for the other replicas, bounded by the setting
// replication_alter_columns_timeout (18.16: 60 s by default, 0 waits
// forever, measured; a replica that is down answers Code 341 "will be done
// asynchronously"). 20.4 moved ALTERs into the replication queue, where
// alter_sync says whom to wait for; 20.4 is a conservative boundary.
func (s Server) ReplicationAlterColumnsTimeout() bool { return !s.AtLeast(20, 4) }

// AlterSyncName is the name of the setting that says whom a Replicated
// ALTER waits for: alter_sync, whose older name
// replication_alter_partitions_sync every release knows (alter_sync is
// certain from 23.1 on).
func (s Server) AlterSyncName() string {
	if s.AtLeast(23, 1) {
		return "alter_sync"
	}
	return "replication_alter_partitions_sync"
}

// ColumnType is the ClickHouse type of a typed column of kind on server s:
// Nullable(T) for a scalar, Array(Nullable(T)) for an array, T being
// String, Int64, Float64, Bool (UInt8 before 21.12) or, for a datetime,
// DateTime64(3, 'UTC') (DateTime('UTC'), whole seconds, before 20.1).
//
// chType is the registry's ClickHouse type for the column when it has one
// (an operator declared or set it), written for current releases; it wins
// over the kind's default where it describes the same kind, mapped to what
// s has: LowCardinality(String) is LowCardinality(Nullable(String)) from
// 19.3 and Nullable(String) before; DateTime64(p, tz) is Nullable(DateTime(tz))
// before 20.1; Bool is Nullable(UInt8) before 21.12. A chType of another
// kind, or one Surge does not fill, is ignored.
func ColumnType(kind batch.Kind, chType string, s Server) string {
	if chType != "" {
		if k, err := DeclaredKind(chType); err == nil && k == kind {
			return declaredType(chType, s)
		}
	}
	if kind.IsArray() {
		return "Array(" + scalarType(kind.Elem(), s) + ")"
	}
	return scalarType(kind, s)
}

// scalarType is the default nullable type of a scalar kind on s.
func scalarType(k batch.Kind, s Server) string {
	switch k {
	case batch.Bool:
		if s.Bool() {
			return "Nullable(Bool)"
		}
		return "Nullable(UInt8)"
	case batch.Int64:
		return "Nullable(Int64)"
	case batch.Float64:
		return "Nullable(Float64)"
	case batch.DateTime:
		if s.DateTime64() {
			return "Nullable(DateTime64(3, 'UTC'))"
		}
		return "Nullable(DateTime('UTC'))"
	}
	return "Nullable(String)"
}

// declaredType maps chType, a type DeclaredKind accepts, to its nullable
// form on s, in the spelling system.columns uses.
func declaredType(chType string, s Server) string {
	t := strings.TrimSpace(chType)
	lowCard := false
	for {
		if inner, ok := strings.CutPrefix(t, "LowCardinality("); ok && strings.HasSuffix(inner, ")") {
			lowCard = true
			t = strings.TrimSpace(inner[:len(inner)-1])
			continue
		}
		if inner, ok := strings.CutPrefix(t, "Nullable("); ok && strings.HasSuffix(inner, ")") {
			t = strings.TrimSpace(inner[:len(inner)-1])
			continue
		}
		break
	}
	if inner, ok := strings.CutPrefix(t, "Array("); ok && strings.HasSuffix(inner, ")") {
		return "Array(" + declaredType(inner[:len(inner)-1], s) + ")"
	}
	switch t {
	case "String":
		if lowCard && s.LowCardinality() {
			return "LowCardinality(Nullable(String))"
		}
		return "Nullable(String)"
	case "Int64", "Float64":
		return "Nullable(" + t + ")"
	case "UInt8":
		return "Nullable(UInt8)"
	case "Bool":
		return scalarType(batch.Bool, s)
	}
	m := dateTimeType.FindStringSubmatch(t) // 64, (...), precision, zone
	if m == nil {
		return scalarType(batch.String, s) // DeclaredKind accepted it, so unreachable
	}
	tz := m[4]
	if tz == "" {
		tz = "'UTC'"
	}
	if m[1] == "" || !s.DateTime64() {
		return "Nullable(DateTime(" + tz + "))"
	}
	precision := m[3]
	if precision == "" {
		precision = "3" // DateTime64's own default
	}
	return "Nullable(DateTime64(" + precision + ", " + tz + "))"
}

// PathComment starts the comment of a property column, followed by its
// property's JSON Pointer: "surge:path=/context/page/url".
const PathComment = "surge:path="

// ColumnDef is a column to add to a table.
type ColumnDef struct {
	// Name is the column's name: a base column's or one ValidColumn accepts.
	Name string
	// Type is its ClickHouse type (ColumnType of a typed column).
	Type string
	// Default is its DEFAULT expression, "" for none.
	Default string
	// Path is the JSON Pointer of the property a typed column holds,
	// written into the column's comment where the server keeps comments;
	// "" for none.
	Path string
}

// AddColumnsSQL is the one statement that adds cols to database.table on
// server s: ALTER TABLE ... ADD COLUMN for each, with IF NOT EXISTS where
// s has it (before 19.1 a column that exists fails the whole statement
// with Code 44, and none of the others is added), DEFAULT when set, and
// COMMENT 'surge:path=<pointer>' where s keeps comments. database, table
// and the names must be plain identifiers.
func AddColumnsSQL(database, table string, cols []ColumnDef, s Server) string {
	var b strings.Builder
	b.WriteString("ALTER TABLE ")
	b.WriteString(database)
	b.WriteByte('.')
	b.WriteString(table)
	for i, c := range cols {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(" ADD COLUMN ")
		if s.AddColumnIfNotExists() {
			b.WriteString("IF NOT EXISTS ")
		}
		b.WriteString(c.Name)
		b.WriteByte(' ')
		b.WriteString(c.Type)
		if c.Default != "" {
			b.WriteString(" DEFAULT ")
			b.WriteString(c.Default)
		}
		if c.Path != "" && s.ColumnComments() {
			b.WriteString(" COMMENT ")
			b.WriteString(QuoteString(PathComment + c.Path))
		}
	}
	return b.String()
}

// QuoteString is s as a ClickHouse string literal, on one line.
func QuoteString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\', '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case 0:
			b.WriteString(`\0`)
		default:
			if c < 0x20 || c == 0x7f {
				fmt.Fprintf(&b, `\x%02X`, c)
				continue
			}
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}
