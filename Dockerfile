FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol protocol
COPY sessions sessions
COPY server server
COPY client client
COPY loadtest loadtest
COPY web-demo web-demo
RUN pip install --no-cache-dir -e .
ENV PARLEY_HOST=0.0.0.0 PARLEY_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=2s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz')"
STOPSIGNAL SIGTERM
CMD ["parley", "serve"]
