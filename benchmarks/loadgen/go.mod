module noria.dev/benchmarks/loadgen

go 1.26
