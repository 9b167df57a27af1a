module github.com/surge-events/surge/tests

go 1.26.0
