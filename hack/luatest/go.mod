module noria.dev/hack/luatest

go 1.26

// The interpreter and JSON bridge Argo CD itself pins (argo-cd go.mod): the fixtures run under the
// same gopher-lua an Argo CD server would run the scripts with.
require (
	github.com/yuin/gopher-lua v1.1.2
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
	sigs.k8s.io/yaml v1.6.0
)

require go.yaml.in/yaml/v2 v2.4.2 // indirect
