"""One meaning of a payment: facts from provider bodies, order-status precedence,
credit and subscription rules, customers."""
