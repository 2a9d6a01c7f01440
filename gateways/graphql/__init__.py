"""The Confidential Computing platform's GraphQL API (seed §4.1), served at /graphql."""
