package validate_test

import (
	"fmt"

	"github.com/switchyard/switchyard/platform/validate"
)

// registerRequest stands for a generated request message.
type registerRequest struct{ email, name string }

func (r *registerRequest) GetEmail() string { return r.email }
func (r *registerRequest) GetName() string  { return r.name }

// register is a handler that starts like the package doc's example.
func register(req *registerRequest) (*struct{}, error) {
	var v validate.Violations
	v.Email("email", req.GetEmail())
	v.Length("name", req.GetName(), 1, 200)
	if err := v.Err(); err != nil {
		return nil, err
	}
	return &struct{}{}, nil
}

func Example() {
	_, err := register(&registerRequest{email: "ada", name: " "})
	fmt.Println(err)
	// Output: rpc error: code = InvalidArgument desc = invalid request: email: must be an email address like name@example.com; name: must not be blank
}
