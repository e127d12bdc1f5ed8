//! A pipelined AMQP 0-9-1 load generator.
