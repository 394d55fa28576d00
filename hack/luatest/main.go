// Command luatest runs Noria's Argo CD resource customizations (integrations/argocd/) under
// gopher-lua, the Lua interpreter Argo CD embeds, the way an Argo CD server runs scripts that come
// from argocd-cm:
//
//   - no standard library but base, package, table and an os reduced to time() and date(): no
//     string library, no io, no os.exit (Argo CD opens the rest only for its own built-in scripts or
//     with resource.customizations.useOpenLibs, which these scripts must not need);
//   - the object is the global `obj`, action parameters the global table `actionParams`;
//   - one second of run time per script;
//   - health.lua returns {status, message} and the status must be one Argo CD knows;
//     discovery.lua returns a table of actions by name; action.lua returns the changed object (or
//     a list of {operation, resource}), encoded through gopher-json as Argo CD does, with an empty
//     table put back to {} where the object had a map.
//
// Subcommands:
//
//	luatest run [-now RFC3339] DIR...     every health_test.yaml and actions/action_test.yaml under DIR;
//	                                      one JSON line per case, exit status 1 when one fails
//	luatest health|discovery|action [-now T] [-param k=v] SCRIPT OBJECT
//	                                      run one script on one object (YAML or JSON), print the result as JSON
//
// -now fixes the clock os.time()/os.date() read, so an action that stamps the time has one expected output.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/yaml"
)

// The health statuses Argo CD accepts from a script (gitops-engine's health package); anything else
// is shown as Unknown with "Lua returned an invalid health status".
var validHealth = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

const scriptTimeout = time.Second

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	nowText := fs.String("now", "", "the clock os.time() and os.date() read, RFC 3339 (default: the real clock)")
	var params paramFlags
	fs.Var(&params, "param", "action parameter name=value (repeatable)")
	_ = fs.Parse(args)
	clock := time.Now
	if *nowText != "" {
		fixed, err := time.Parse(time.RFC3339, *nowText)
		if err != nil {
			fail("-now %q: %v (want RFC 3339, e.g. 2026-12-02T09:00:00Z)", *nowText, err)
		}
		clock = func() time.Time { return fixed }
	}
	sandbox := Sandbox{Clock: clock}
	switch cmd {
	case "run":
		if fs.NArg() == 0 {
			usage()
		}
		failed := 0
		for _, dir := range fs.Args() {
			failed += runTree(sandbox, dir)
		}
		if failed > 0 {
			os.Exit(1)
		}
	case "health", "discovery", "action":
		if fs.NArg() != 2 {
			usage()
		}
		script, err := os.ReadFile(fs.Arg(0))
		check(err)
		obj, err := readObject(fs.Arg(1))
		check(err)
		var out any
		switch cmd {
		case "health":
			out, err = sandbox.Health(obj, string(script))
		case "discovery":
			out, err = sandbox.Discovery(obj, string(script))
		default:
			out, err = sandbox.Action(obj, string(script), params)
		}
		check(err)
		data, err := json.Marshal(out)
		check(err)
		fmt.Println(string(data))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: luatest run [-now RFC3339] DIR...\n"+
		"       luatest health|discovery|action [-now RFC3339] [-param name=value] SCRIPT OBJECT")
	os.Exit(2)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "luatest: "+format+"\n", args...)
	os.Exit(2)
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

type paramFlags map[string]string

func (p *paramFlags) String() string { return fmt.Sprint(map[string]string(*p)) }

func (p *paramFlags) Set(text string) error {
	name, value, ok := strings.Cut(text, "=")
	if !ok {
		return fmt.Errorf("want name=value, got %q", text)
	}
	if *p == nil {
		*p = paramFlags{}
	}
	(*p)[name] = value
	return nil
}

// --- the sandbox -------------------------------------------------------------------------------------

// Sandbox runs one script in a fresh Lua state with Argo CD's restrictions.
type Sandbox struct {
	Clock func() time.Time
}

// HealthStatus is what health.lua returns.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// ResourceAction is one entry of discovery.lua's table, in Argo CD's shape.
type ResourceAction struct {
	Name        string           `json:"name"`
	Disabled    bool             `json:"disabled"`
	DisplayName string           `json:"displayName,omitempty"`
	IconClass   string           `json:"iconClass,omitempty"`
	Params      []map[string]any `json:"params,omitempty"`
}

// Impacted is one object an action returns: the changed source object is a "patch".
type Impacted struct {
	Operation string         `json:"operation"`
	Resource  map[string]any `json:"resource"`
}

func (s Sandbox) run(obj map[string]any, script string, params map[string]string) (lua.LValue, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, s.openOs}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, s.loadOs) // local os = require("os") gets the reduced one too
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	l.SetContext(ctx)
	actionParams := l.CreateTable(0, len(params))
	for k, v := range params {
		actionParams.RawSetString(k, toLua(l, v))
	}
	l.SetGlobal("actionParams", actionParams)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		var apiErr *lua.ApiError
		if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
			apiErr.StackTrace = "" // what Argo CD shows a user: the error, not the Go stack
			return nil, apiErr
		}
		return nil, err
	}
	return l.Get(-1), nil
}

// runTable runs a script that must return a table and gives that table as JSON, encoded through
// gopher-json as Argo CD does (so an empty table is []). With nilOK a script that returns nothing
// gives nil data (health.lua may: Argo CD then keeps its default health).
func (s Sandbox) runTable(obj map[string]any, script string, params map[string]string, nilOK bool) ([]byte, error) {
	ret, err := s.run(obj, script, params)
	if err != nil {
		return nil, err
	}
	if nilOK && ret.Type() == lua.LTNil {
		return nil, nil
	}
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	return luajson.Encode(ret)
}

// Health runs health.lua.
func (s Sandbox) Health(obj map[string]any, script string) (HealthStatus, error) {
	data, err := s.runTable(obj, script, nil, true)
	if err != nil {
		return HealthStatus{}, err
	}
	var out HealthStatus
	if data == nil || string(data) == "[]" {
		return out, nil
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return HealthStatus{}, fmt.Errorf("health.lua returned %s: %w", data, err)
	}
	if !validHealth[out.Status] {
		return HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return out, nil
}

// Discovery runs discovery.lua; actions come back sorted by name.
func (s Sandbox) Discovery(obj map[string]any, script string) ([]ResourceAction, error) {
	data, err := s.runTable(obj, script, nil, false)
	if err != nil {
		return nil, err
	}
	if string(data) == "[]" {
		return nil, nil
	}
	var byName map[string]json.RawMessage
	if err := json.Unmarshal(data, &byName); err != nil {
		return nil, fmt.Errorf("discovery.lua must return a table of actions by name, got %s", data)
	}
	out := make([]ResourceAction, 0, len(byName))
	for name, raw := range byName {
		action := ResourceAction{}
		if string(raw) != "[]" { // an empty Lua table: enabled, nothing else said
			if err := json.Unmarshal(raw, &action); err != nil {
				return nil, fmt.Errorf("action %s: %w", name, err)
			}
		}
		action.Name = name
		out = append(out, action)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Action runs action.lua and returns the objects it changes or creates.
func (s Sandbox) Action(obj map[string]any, script string, params map[string]string) ([]Impacted, error) {
	data, err := s.runTable(obj, script, params, false)
	if err != nil {
		return nil, err
	}
	var out []Impacted
	if strings.HasPrefix(string(data), "[") {
		if err := json.Unmarshal(data, &out); err != nil {
			return nil, err
		}
	} else {
		var changed map[string]any
		if err := json.Unmarshal(data, &changed); err != nil {
			return nil, err
		}
		out = []Impacted{{Operation: "patch", Resource: changed}}
	}
	original := jsonRoundTrip(obj)
	for i := range out {
		if out[i].Operation == "patch" {
			out[i].Resource = restoreEmptyMaps(out[i].Resource, original).(map[string]any)
		}
	}
	return out, nil
}

// restoreEmptyMaps undoes one loss of the Lua round trip: an empty table encodes as [], so a map the
// script emptied (or left empty) would turn into a list; where the original held a map, {} it is.
func restoreEmptyMaps(changed, original any) any {
	switch c := changed.(type) {
	case map[string]any:
		o, _ := original.(map[string]any)
		for k, v := range c {
			c[k] = restoreEmptyMaps(v, o[k])
		}
		return c
	case []any:
		if _, wasMap := original.(map[string]any); wasMap && len(c) == 0 {
			return map[string]any{}
		}
		o, _ := original.([]any)
		for i := range c {
			var before any
			if i < len(o) {
				before = o[i]
			}
			c[i] = restoreEmptyMaps(c[i], before)
		}
		return c
	}
	return changed
}

// toLua converts a decoded JSON/YAML value to Lua as Argo CD does: numbers become Lua numbers,
// maps tables with string keys, lists tables with keys 1..n, null nil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		t := l.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(v))
		for k, item := range v {
			t.RawSetString(k, toLua(l, item))
		}
		return t
	}
	return lua.LNil
}

// --- os, reduced ----------------------------------------------------------------------------------------

func (s Sandbox) osFuncs() map[string]lua.LGFunction {
	return map[string]lua.LGFunction{"time": s.osTime, "date": s.osDate}
}

func (s Sandbox) openOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.OsLibName, s.osFuncs()))
	return 1
}

func (s Sandbox) loadOs(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), s.osFuncs()))
	return 1
}

func (s Sandbox) osTime(l *lua.LState) int {
	if l.GetTop() == 0 {
		l.Push(lua.LNumber(s.Clock().Unix()))
		return 1
	}
	t := l.CheckTable(1)
	field := func(name string, def int) int {
		if n, ok := t.RawGetString(name).(lua.LNumber); ok {
			return int(n)
		}
		return def
	}
	at := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	l.Push(lua.LNumber(at.Unix()))
	return 1
}

// osDate formats the clock with strftime directives; "!" first means UTC, "*t" a table.
func (s Sandbox) osDate(l *lua.LState) int {
	at := s.Clock()
	format := "%c"
	if l.GetTop() >= 1 {
		format = l.CheckString(1)
	}
	if l.GetTop() >= 2 {
		at = time.Unix(l.CheckInt64(2), 0)
	}
	if strings.HasPrefix(format, "!") {
		at, format = at.UTC(), format[1:]
	}
	if strings.HasPrefix(format, "*t") {
		t := l.NewTable()
		for k, v := range map[string]int{"year": at.Year(), "month": int(at.Month()), "day": at.Day(),
			"hour": at.Hour(), "min": at.Minute(), "sec": at.Second(), "wday": int(at.Weekday()) + 1,
			"yday": at.YearDay()} {
			t.RawSetString(k, lua.LNumber(v))
		}
		t.RawSetString("isdst", lua.LFalse)
		l.Push(t)
		return 1
	}
	text, err := strftime(at, format)
	if err != nil {
		l.RaiseError("os.date: %v", err)
	}
	l.Push(lua.LString(text))
	return 1
}

var strftimeLayouts = map[byte]string{
	'Y': "2006", 'y': "06", 'm': "01", 'd': "02", 'H': "15", 'M': "04", 'S': "05", 'X': "15:04:05",
	'x': "01/02/06", 'c': "Mon Jan  2 15:04:05 2006", 'b': "Jan", 'B': "January", 'a': "Mon",
	'A': "Monday", 'p': "PM", 'Z': "MST", 'I': "03",
}

func strftime(at time.Time, format string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			b.WriteByte(format[i])
			continue
		}
		i++
		switch d := format[i]; d {
		case '%':
			b.WriteByte('%')
		case 'j':
			fmt.Fprintf(&b, "%03d", at.YearDay())
		default:
			layout, ok := strftimeLayouts[d]
			if !ok {
				return "", fmt.Errorf("directive %%%c is not supported", d)
			}
			b.WriteString(at.Format(layout))
		}
	}
	return b.String(), nil
}

// --- the fixtures -------------------------------------------------------------------------------------

type healthTests struct {
	Tests []struct {
		HealthStatus HealthStatus `json:"healthStatus"`
		InputPath    string       `json:"inputPath"`
	} `json:"tests"`
}

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string           `json:"inputPath"`
		Result    []ResourceAction `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action               string            `json:"action"`
		InputPath            string            `json:"inputPath"`
		ExpectedOutputPath   string            `json:"expectedOutputPath"`
		ExpectedErrorMessage string            `json:"expectedErrorMessage"`
		Parameters           map[string]string `json:"parameters"`
	} `json:"actionTests"`
}

// Result is one fixture case, printed as one JSON line.
type Result struct {
	Case   string `json:"case"` // <kind dir>:<health|discovery|action/<name>>:<input path>
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func report(name string, err error) int {
	r := Result{Case: name, OK: err == nil}
	if err != nil {
		r.Detail = err.Error()
	}
	data, _ := json.Marshal(r)
	fmt.Println(string(data))
	if err != nil {
		return 1
	}
	return 0
}

// runTree runs every fixture file under root and returns how many cases failed.
func runTree(s Sandbox, root string) int {
	failed := 0
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch d.Name() {
		case "health_test.yaml":
			failed += runHealthTests(s, filepath.Dir(path), root)
		case "action_test.yaml":
			failed += runActionTests(s, filepath.Dir(path), root)
		}
		return nil
	})
	if err != nil {
		failed += report(root, err)
	}
	return failed
}

func kindDir(dir, root string) string {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return dir
	}
	return strings.TrimSuffix(filepath.ToSlash(rel), "/actions")
}

func runHealthTests(s Sandbox, dir, root string) int {
	var spec healthTests
	if err := readYAML(filepath.Join(dir, "health_test.yaml"), &spec); err != nil {
		return report(kindDir(dir, root)+":health", err)
	}
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return report(kindDir(dir, root)+":health", err)
	}
	failed := 0
	for _, tc := range spec.Tests {
		name := kindDir(dir, root) + ":health:" + tc.InputPath
		failed += report(name, func() error {
			obj, err := readObject(filepath.Join(dir, tc.InputPath))
			if err != nil {
				return err
			}
			got, err := s.Health(obj, string(script))
			if err != nil {
				return err
			}
			if got != tc.HealthStatus {
				return fmt.Errorf("health %+v, want %+v", got, tc.HealthStatus)
			}
			return nil
		}())
	}
	return failed
}

func runActionTests(s Sandbox, dir, root string) int {
	var spec actionTests
	prefix := kindDir(dir, root)
	if err := readYAML(filepath.Join(dir, "action_test.yaml"), &spec); err != nil {
		return report(prefix+":actions", err)
	}
	discovery, err := os.ReadFile(filepath.Join(dir, "discovery.lua"))
	if err != nil {
		return report(prefix+":discovery", err)
	}
	failed := 0
	for _, tc := range spec.DiscoveryTests {
		failed += report(prefix+":discovery:"+tc.InputPath, func() error {
			obj, err := readObject(filepath.Join(dir, tc.InputPath))
			if err != nil {
				return err
			}
			got, err := s.Discovery(obj, string(discovery))
			if err != nil {
				return err
			}
			want := append([]ResourceAction(nil), tc.Result...)
			sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
			// Stricter than Argo CD's own check (each discovered action is among the expected ones):
			// the same set, so an action that goes missing fails too.
			if !reflect.DeepEqual(normalise(got), normalise(want)) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(want)
				return fmt.Errorf("discovered %s, want %s", g, w)
			}
			return nil
		}())
	}
	for _, tc := range spec.ActionTests {
		failed += report(prefix+":action/"+tc.Action+":"+tc.InputPath, func() error {
			script, err := os.ReadFile(filepath.Join(dir, tc.Action, "action.lua"))
			if err != nil {
				return fmt.Errorf("action %s has no action.lua: %w", tc.Action, err)
			}
			obj, err := readObject(filepath.Join(dir, tc.InputPath))
			if err != nil {
				return err
			}
			got, err := s.Action(obj, string(script), tc.Parameters)
			if tc.ExpectedErrorMessage != "" {
				if err == nil || err.Error() != tc.ExpectedErrorMessage {
					return fmt.Errorf("error %v, want %q", err, tc.ExpectedErrorMessage)
				}
				return nil
			}
			if err != nil {
				return err
			}
			want, err := readObject(filepath.Join(dir, tc.ExpectedOutputPath))
			if err != nil {
				return err
			}
			if len(got) != 1 || got[0].Operation != "patch" {
				return fmt.Errorf("want the changed object back (one patch), got %d impacted resources", len(got))
			}
			if !reflect.DeepEqual(jsonRoundTrip(got[0].Resource), jsonRoundTrip(want)) {
				return fmt.Errorf("result differs from %s:\n%s", tc.ExpectedOutputPath,
					describeDiff("", jsonRoundTrip(want), jsonRoundTrip(got[0].Resource)))
			}
			return nil
		}())
	}
	return failed
}

func normalise(v any) any { return jsonRoundTrip(v) }

func jsonRoundTrip(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	_ = json.Unmarshal(data, &out)
	return out
}

// describeDiff lists the paths where two decoded JSON values differ.
func describeDiff(path string, want, got any) string {
	wm, wok := want.(map[string]any)
	gm, gok := got.(map[string]any)
	if wok && gok {
		keys := map[string]bool{}
		for k := range wm {
			keys[k] = true
		}
		for k := range gm {
			keys[k] = true
		}
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		var b strings.Builder
		for _, k := range names {
			b.WriteString(describeDiff(path+"."+k, wm[k], gm[k]))
		}
		return b.String()
	}
	if reflect.DeepEqual(want, got) {
		return ""
	}
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	return fmt.Sprintf("  %s: want %s, got %s\n", path, w, g)
}

func readYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readObject(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if obj == nil {
		return nil, fmt.Errorf("%s: no object", path)
	}
	return obj, nil
}
