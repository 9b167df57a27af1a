module github.com/surge-events/surge/tools

go 1.26.0
