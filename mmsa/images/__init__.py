"""The images stage: untrusted image URLs to cached bytes, one status each, and the model's pixels.

Modules, from the contract down to the work:
- `status`: the closed set `ImageStatus` (docs/image_status.md), `FetchResult` (one row of the status table);
- `cache`: `ImageCache`, the content-addressed cache of downloaded bytes and the URL index;
- `config`: `FetchConfig`, every fetch setting, handed to the parts that need it at construction;
- `client`: the HTTP client under the address policy (mmsa.netpolicy), deadlines and caps;
- `worker`: one URL to one `FetchResult` (local file, URL index, download with retries, decode, store);
- `fetch`: `fetch_images`, which runs the worker on threads of this process or on worker processes, as its
  config says;
- `processes`: the worker processes (images back through shared memory, the per-host cap shared);
- `decode`, `gpudecode`: bytes to uint8 RGB pixels, on the CPU or in batches on the GPU.

This file imports nothing, so that `mmsa.images.cache` (and the dashboard with it) loads without torch.
"""
