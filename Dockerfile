# The Cloud Run job: entrypoint.sh with gcloud and curl, and cronsim for the scheduled slot.
# Google's Cloud SDK image, slim variant (Debian, gcloud, bash, curl; a non-root user, cloudsdk, uid 1000).
FROM gcr.io/google.com/cloudsdktool/google-cloud-cli:528.0.0-slim

ENV CLOUDSDK_CORE_DISABLE_PROMPTS=1 \
    CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=1 \
    CLOUDSDK_CONFIG=/tmp/gcloud

# The slot of a scheduled execution (orchestrator/slot.py): cronsim, the version uv.lock pins,
# beside the app (PEP 668: not into the system's Python).
RUN python3 -m pip install --no-cache-dir --target=/app/python cronsim==2.8

# entrypoint.sh is committed executable; COPY keeps the mode. It sources its modules from the
# orchestrator/ folder beside it.
COPY entrypoint.sh /app/entrypoint.sh
COPY orchestrator/ /app/orchestrator/

USER 1000:1000
WORKDIR /tmp

ENTRYPOINT ["/app/entrypoint.sh"]
