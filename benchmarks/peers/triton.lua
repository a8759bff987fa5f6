-- wrk script: one diabetes row per request in Triton's v2 protocol (FP64 tensor [1, 10]).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs": [{"name": "features", "shape": [1, 10], "datatype": "FP64", "data": [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176]}]}'
