"""The Open Inference Protocol over gRPC (``--grpc-port``; the ``grpc`` extra): the messages
(``inference.proto``, generated ``inference_pb2``), their tensors (``tensors.py``), the inference
adapter over the request pipeline (``adapter.py``), the service (``service.py``) and its server
with the health service (``server.py``). Imported only when the gRPC port is on."""
