// Package customers registers customers and announces them with
// CustomerRegistered.
package customers

import (
	"context"
	"embed"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/validate"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Spec describes the customers service.
func Spec() service.Spec {
	return service.Spec{Name: "customers", Port: 50051, Migrations: migrations, Emits: true, Setup: Setup}
}

// Setup registers the CustomerService.
func Setup(env *service.Env) error {
	customersv1.RegisterCustomerServiceServer(env.Server, &server{env: env})
	return nil
}

type server struct {
	customersv1.UnimplementedCustomerServiceServer
	env *service.Env
}

func (s *server) RegisterCustomer(ctx context.Context, req *customersv1.RegisterCustomerRequest) (*customersv1.RegisterCustomerResponse, error) {
	var v validate.Violations
	v.Email("email", req.GetEmail())
	v.Length("name", req.GetName(), 1, 200)
	if err := v.Err(); err != nil {
		return nil, err
	}
	c := &customersv1.Customer{CustomerId: uuid.NewString(), Email: req.GetEmail(), Name: req.GetName()}
	err := pgx.BeginFunc(ctx, s.env.Pool, func(tx pgx.Tx) error {
		var created time.Time
		err := tx.QueryRow(ctx, `INSERT INTO customers (customer_id, email, name) VALUES ($1, $2, $3)
			ON CONFLICT DO NOTHING RETURNING create_time`, c.CustomerId, c.Email, c.Name).Scan(&created)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.AlreadyExists, "a customer with email %s is already registered", c.Email)
		}
		if err != nil {
			return err
		}
		c.CreateTime = timestamppb.New(created)
		return s.env.Outbox.Write(ctx, tx, outbox.Event{
			AggregateID: c.CustomerId,
			Message:     &customersv1.CustomerRegistered{Customer: c},
		})
	})
	if err != nil {
		return nil, err
	}
	return &customersv1.RegisterCustomerResponse{Customer: c}, nil
}

func (s *server) GetCustomer(ctx context.Context, req *customersv1.GetCustomerRequest) (*customersv1.GetCustomerResponse, error) {
	var v validate.Violations
	v.UUID("customer_id", req.GetCustomerId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	c := &customersv1.Customer{CustomerId: req.GetCustomerId()}
	var created time.Time
	err := s.env.Pool.QueryRow(ctx, `SELECT email, name, create_time FROM customers WHERE customer_id = $1`, c.CustomerId).
		Scan(&c.Email, &c.Name, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "customer %s not found", c.CustomerId)
	}
	if err != nil {
		return nil, err
	}
	c.CreateTime = timestamppb.New(created)
	return &customersv1.GetCustomerResponse{Customer: c}, nil
}
