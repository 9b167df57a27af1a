module github.com/surge-events/surge/services/partitioner

go 1.26.0

require github.com/surge-events/surge/pkg v0.0.0

replace github.com/surge-events/surge/pkg => ../../pkg
