//! The Hugging Face hub, resolved the way the Python client resolves it: endpoint, cache and
//! token; whoami; diagnosis of failures; resumable verified downloads; the cache.
