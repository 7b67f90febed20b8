"""The screening service: jobs over the store, a micro-batcher in front of the models, the HTTP API
(Starlette, mounted in the BentoML service ``secondreader.service.bento:SecondReader``)."""
