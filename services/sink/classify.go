package sink

import (
	"errors"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/column"

	"github.com/surge-events/surge/pkg/batch"
)

// Class says what to do with a batch whose insert failed.
type Class int

const (
	// Transient failures are retried with backoff until they pass: the
	// server is down, busy, out of memory, has too many parts, the network
	// broke or timed out. A batch is never dropped for them.
	Transient Class = iota
	// Permanent failures are about the batch's content and would fail
	// again: the batch goes to the dead-letter stream and is acked.
	Permanent
)

func (c Class) String() string {
	if c == Permanent {
		return "permanent"
	}
	return "transient"
}

// permanentCodes are ClickHouse exception codes that blame the data sent,
// not the server or the network.
var permanentCodes = map[int32]string{
	6:   "CANNOT_PARSE_TEXT",
	26:  "CANNOT_PARSE_QUOTED_STRING",
	27:  "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
	38:  "CANNOT_PARSE_DATE",
	41:  "CANNOT_PARSE_DATETIME",
	53:  "TYPE_MISMATCH",
	69:  "ARGUMENT_OUT_OF_BOUND",
	70:  "CANNOT_CONVERT_TYPE",
	72:  "CANNOT_PARSE_NUMBER",
	117: "INCORRECT_DATA",
	131: "TOO_LARGE_STRING_SIZE",
	321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
	349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
}

// tableStateCodes are ClickHouse exception codes that may read like the
// batch's fault but are about the table's state, which the sink repairs
// before its next attempt: never permanent. A column the insert names is
// missing (a replica that has not applied the column's ALTER yet, a
// failover to one, a column dropped by hand): the sink reads the replica's
// columns again and adds what is missing. The table or database is
// missing: the sink makes them again.
var tableStateCodes = map[int32]string{
	16: "NO_SUCH_COLUMN_IN_TABLE",
	47: "UNKNOWN_IDENTIFIER",
	60: "UNKNOWN_TABLE",
	81: "UNKNOWN_DATABASE",
}

// Classify sorts an error of decoding or inserting a batch. Only errors
// known to be about the content are permanent; anything unknown is
// transient, because retrying costs time while dead-lettering good rows
// costs a replay by hand.
func Classify(err error) Class {
	if err == nil {
		return Transient
	}
	if errors.Is(err, batch.ErrCorrupt) || errors.Is(err, errWrongShard) {
		return Permanent
	}
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		if _, ok := tableStateCodes[ex.Code]; ok {
			return Transient
		}
		if _, ok := permanentCodes[ex.Code]; ok {
			return Permanent
		}
		return Transient
	}
	// The driver checks values while appending them to a column.
	var (
		overflow  *column.DateOverflowError
		converter *column.ColumnConverterError
	)
	if errors.As(err, &overflow) || errors.As(err, &converter) {
		return Permanent
	}
	return Transient
}

// errWrongShard marks a batch whose header names another shard than its subject.
var errWrongShard = errors.New("batch belongs to another shard")
