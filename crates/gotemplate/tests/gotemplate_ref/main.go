// Renders test cases with Go's text/template, for comparison with kvsync's engine.
// Reads a JSON array of cases on stdin and writes a JSON array of results.
// Only the standard library is used. The confd and consul-template functions registered here are
// the simple, pure ones, written as confd's and consul-template's sources define them.
package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
)

type testCase struct {
	Name     string          `json:"name"`
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
	Left     string          `json:"left"`
	Right    string          `json:"right"`
	Funcs    string          `json:"funcs"`
}

type result struct {
	Name   string  `json:"name"`
	Output []byte  `json:"output"`
	Error  *string `json:"error"`
}

// convert turns json.Number into int (when integral) or float64.
func convert(v interface{}) interface{} {
	switch t := v.(type) {
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return int(i)
		}
		f, _ := t.Float64()
		return f
	case []interface{}:
		for i := range t {
			t[i] = convert(t[i])
		}
		return t
	case map[string]interface{}:
		for k := range t {
			t[k] = convert(t[k])
		}
		return t
	}
	return v
}

func confdFuncs() template.FuncMap {
	return template.FuncMap{
		"base":     path.Base,
		"dir":      path.Dir,
		"split":    strings.Split,
		"join":     strings.Join,
		"toUpper":  strings.ToUpper,
		"toLower":  strings.ToLower,
		"contains": strings.Contains,
		"replace":  strings.Replace,
		"trimSuffix": strings.TrimSuffix,
		"json": func(data string) (map[string]interface{}, error) {
			var ret map[string]interface{}
			err := json.Unmarshal([]byte(data), &ret)
			return ret, err
		},
		"jsonArray": func(data string) ([]interface{}, error) {
			var ret []interface{}
			err := json.Unmarshal([]byte(data), &ret)
			return ret, err
		},
		"map": func(values ...interface{}) (map[string]interface{}, error) {
			if len(values)%2 != 0 {
				return nil, errors.New("invalid map call")
			}
			dict := make(map[string]interface{}, len(values)/2)
			for i := 0; i < len(values); i += 2 {
				key, ok := values[i].(string)
				if !ok {
					return nil, errors.New("map keys must be strings")
				}
				dict[key] = values[i+1]
			}
			return dict, nil
		},
		"atoi": strconv.Atoi,
		"add":  func(a, b int) int { return a + b },
		"sub":  func(a, b int) int { return a - b },
		"div":  func(a, b int) int { return a / b },
		"mod":  func(a, b int) int { return a % b },
		"mul":  func(a, b int) int { return a * b },
		"seq": func(first, last int) []int {
			var arr []int
			for i := first; i <= last; i++ {
				arr = append(arr, i)
			}
			return arr
		},
		"base64Encode": func(data string) string { return base64.StdEncoding.EncodeToString([]byte(data)) },
		"base64Decode": func(data string) (string, error) {
			s, err := base64.StdEncoding.DecodeString(data)
			return string(s), err
		},
		"parseBool": strconv.ParseBool,
		"reverse": func(values interface{}) interface{} {
			if v, ok := values.([]string); ok {
				for l, r := 0, len(v)-1; l < r; l, r = l+1, r-1 {
					v[l], v[r] = v[r], v[l]
				}
			}
			return values
		},
		"sortByLength": func(values []string) []string {
			sort.SliceStable(values, func(i, j int) bool { return len(values[i]) < len(values[j]) })
			return values
		},
	}
}

func inList(l, v interface{}) bool {
	lv := reflect.ValueOf(l)
	vv := reflect.ValueOf(v)
	switch lv.Kind() {
	case reflect.Slice:
		for i := 0; i < lv.Len(); i++ {
			e := reflect.ValueOf(lv.Index(i).Interface())
			switch e.Kind() {
			case reflect.Int, reflect.Int64:
				if vv.Kind() == reflect.Int || vv.Kind() == reflect.Int64 {
					if vv.Int() == e.Int() {
						return true
					}
				}
			case reflect.Float64:
				if vv.Kind() == reflect.Float64 && vv.Float() == e.Float() {
					return true
				}
			case reflect.String:
				if vv.IsValid() && vv.Type() == e.Type() && vv.String() == e.String() {
					return true
				}
			}
		}
	case reflect.String:
		if vv.IsValid() && vv.Type() == lv.Type() && strings.Contains(lv.String(), vv.String()) {
			return true
		}
	}
	return false
}

func numOp(name string, b, a interface{}, fi func(x, y int64) int64, ff func(x, y float64) float64) (interface{}, error) {
	av := reflect.ValueOf(a)
	bv := reflect.ValueOf(b)
	isInt := func(v reflect.Value) bool { return v.Kind() == reflect.Int || v.Kind() == reflect.Int64 }
	isFloat := func(v reflect.Value) bool { return v.Kind() == reflect.Float64 }
	switch {
	case isInt(av) && isInt(bv):
		return fi(av.Int(), bv.Int()), nil
	case isInt(av) && isFloat(bv):
		return ff(float64(av.Int()), bv.Float()), nil
	case isFloat(av) && isInt(bv):
		return ff(av.Float(), float64(bv.Int())), nil
	case isFloat(av) && isFloat(bv):
		return ff(av.Float(), bv.Float()), nil
	case !isInt(av) && !isFloat(av):
		return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, av, a)
	}
	return nil, fmt.Errorf("%s: unknown type for %q (%T)", name, bv, b)
}

func consulFuncs() template.FuncMap {
	return template.FuncMap{
		"split": func(sep, s string) ([]string, error) {
			s = strings.TrimSpace(s)
			if s == "" {
				return []string{}, nil
			}
			return strings.Split(s, sep), nil
		},
		"join":       func(sep string, a []string) (string, error) { return strings.Join(a, sep), nil },
		"trimSpace":  func(s string) (string, error) { return strings.TrimSpace(s), nil },
		"trim":       func(c, s string) (string, error) { return strings.Trim(s, c), nil },
		"trimPrefix": func(p, s string) (string, error) { return strings.TrimPrefix(s, p), nil },
		"trimSuffix": func(p, s string) (string, error) { return strings.TrimSuffix(s, p), nil },
		"toLower":    func(s string) (string, error) { return strings.ToLower(s), nil },
		"toUpper":    func(s string) (string, error) { return strings.ToUpper(s), nil },
		"replaceAll": func(f, t, s string) (string, error) { return strings.ReplaceAll(s, f, t), nil },
		"regexReplaceAll": func(re, pl, s string) (string, error) {
			c, err := regexp.Compile(re)
			if err != nil {
				return "", err
			}
			return c.ReplaceAllString(s, pl), nil
		},
		"regexMatch": func(re, s string) (bool, error) {
			c, err := regexp.Compile(re)
			if err != nil {
				return false, err
			}
			return c.MatchString(s), nil
		},
		"contains": func(v, l interface{}) (bool, error) { return inList(l, v), nil },
		"in":       func(l, v interface{}) (bool, error) { return inList(l, v), nil },
		"containsAll": func(v []interface{}, l interface{}) (bool, error) {
			for _, x := range v {
				if !inList(l, x) {
					return false, nil
				}
			}
			return true, nil
		},
		"containsAny": func(v []interface{}, l interface{}) (bool, error) {
			for _, x := range v {
				if inList(l, x) {
					return true, nil
				}
			}
			return false, nil
		},
		"parseBool": func(s string) (bool, error) {
			if s == "" {
				return false, nil
			}
			return strconv.ParseBool(s)
		},
		"parseInt": func(s string) (int64, error) {
			if s == "" {
				return 0, nil
			}
			return strconv.ParseInt(s, 10, 64)
		},
		"parseFloat": func(s string) (float64, error) {
			if s == "" {
				return 0, nil
			}
			return strconv.ParseFloat(s, 64)
		},
		"parseJSON": func(s string) (interface{}, error) {
			if s == "" {
				return map[string]interface{}{}, nil
			}
			var data interface{}
			err := json.Unmarshal([]byte(s), &data)
			return data, err
		},
		"toJSON": func(i interface{}) (string, error) {
			r, err := json.Marshal(i)
			return string(bytes.TrimSpace(r)), err
		},
		"toJSONPretty": func(i interface{}) (string, error) {
			r, err := json.MarshalIndent(i, "", "  ")
			return string(bytes.TrimSpace(r)), err
		},
		"base64Encode":    func(s string) (string, error) { return base64.StdEncoding.EncodeToString([]byte(s)), nil },
		"base64URLEncode": func(s string) (string, error) { return base64.URLEncoding.EncodeToString([]byte(s)), nil },
		"base64Decode": func(s string) (string, error) {
			v, err := base64.StdEncoding.DecodeString(s)
			return string(v), err
		},
		"sha256Hex": func(s string) (string, error) {
			h := sha256.Sum256([]byte(s))
			return hex.EncodeToString(h[:]), nil
		},
		"md5sum": func(s string) (string, error) {
			h := md5.Sum([]byte(s))
			return hex.EncodeToString(h[:]), nil
		},
		"add": func(b, a interface{}) (interface{}, error) {
			return numOp("add", b, a, func(x, y int64) int64 { return x + y }, func(x, y float64) float64 { return x + y })
		},
		"subtract": func(b, a interface{}) (interface{}, error) {
			return numOp("subtract", b, a, func(x, y int64) int64 { return x - y }, func(x, y float64) float64 { return x - y })
		},
		"multiply": func(b, a interface{}) (interface{}, error) {
			return numOp("multiply", b, a, func(x, y int64) int64 { return x * y }, func(x, y float64) float64 { return x * y })
		},
		"divide": func(b, a interface{}) (interface{}, error) {
			return numOp("divide", b, a, func(x, y int64) int64 { return x / y }, func(x, y float64) float64 { return x / y })
		},
		"minimum": func(b, a interface{}) (interface{}, error) {
			return numOp("minimum", b, a, func(x, y int64) int64 {
				if x < y {
					return x
				}
				return y
			}, func(x, y float64) float64 {
				if x < y {
					return x
				}
				return y
			})
		},
		"indent": func(spaces int, s string) (string, error) {
			if spaces < 0 {
				return "", fmt.Errorf("indent value must be a positive integer")
			}
			var output []byte
			prefix := []byte(strings.Repeat(" ", spaces))
			sp := true
			for _, c := range []byte(s) {
				if sp && c != '\n' {
					output = append(output, prefix...)
				}
				output = append(output, c)
				sp = c == '\n'
			}
			return string(output), nil
		},
		"splitToMap": func(sep1, sep2, s string) (map[string]string, error) {
			s = strings.TrimSpace(s)
			m := map[string]string{}
			if s == "" {
				return m, nil
			}
			for _, item := range strings.Split(s, sep1) {
				k, v, f := strings.Cut(item, sep2)
				if f {
					m[k] = v
				}
			}
			return m, nil
		},
	}
}

func render(c testCase) result {
	r := result{Name: c.Name}
	fail := func(err error) result {
		s := err.Error()
		r.Error = &s
		return r
	}
	t := template.New(c.Name).Delims(c.Left, c.Right)
	switch c.Funcs {
	case "confd":
		t = t.Funcs(confdFuncs())
	case "consul":
		t = t.Funcs(consulFuncs())
	}
	t, err := t.Parse(c.Template)
	if err != nil {
		return fail(err)
	}
	var data interface{}
	if len(c.Data) > 0 {
		d := json.NewDecoder(bytes.NewReader(c.Data))
		d.UseNumber()
		if err := d.Decode(&data); err != nil {
			return fail(err)
		}
		data = convert(data)
	}
	var out bytes.Buffer
	err = t.Execute(&out, data)
	r.Output = out.Bytes()
	if err != nil {
		return fail(err)
	}
	return r
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	results := make([]result, 0, len(cases))
	for _, c := range cases {
		results = append(results, render(c))
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
