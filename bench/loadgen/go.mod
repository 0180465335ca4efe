module sluicegate/bench/loadgen

go 1.22
