#!/usr/bin/env bash
# bench/seed_flow.sh: the flow of the user's original description (the seed this project grew
# from), transcribed literally for bench/flow.py to compare against. NOT for use: it has every flaw
# the project fixes (no trap, no deadline on the TERMINATED loop, errors exit 0, an open /run,
# /run cut off at 30 s).
# Changes from the seed, so it can run at all: the bearer token header (the agent requires it),
# the port from AGENT_PORT, $VM read as $INSTANCE (the seed uses both names for one VM), and a
# health loop with `sleep 5` (the seed shows one curl; its text says it waits until ready).
# The seed's `describe` has no --zone: bench/flow.py sets CLOUDSDK_COMPUTE_ZONE for it.
# Reads: REGION ZONE INSTANCE STATIC_NAME AGENT_TOKEN AGENT_PORT.

VM=$INSTANCE

# 1) Static IP를 VM에 할당
STATIC_IP=$(gcloud compute addresses describe "$STATIC_NAME" \
  --region="$REGION" --format="value(address)")

gcloud compute instances add-access-config "$VM" \
  --zone="$ZONE" \
  --network-interface=nic0 \
  --access-config-name="External NAT" \
  --address="$STATIC_IP"

# 2) VM 시작
gcloud compute instances start "$INSTANCE" --zone="$ZONE"

# 3) FastAPI 서버 헬스체크 대기
API_BASE_URL="http://$STATIC_IP:${AGENT_PORT:-8000}"
until curl -s -X GET "$API_BASE_URL/" --max-time 5 >/dev/null; do
  sleep 5
done

# Cloud Run에서 API 호출
RUN_URL="$API_BASE_URL/run"
response=$(curl -s -X GET "$RUN_URL" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer $AGENT_TOKEN" \
  --max-time 30)
echo "$response"

# 1) VM 종료
gcloud compute instances stop "$INSTANCE" --zone="$ZONE"

# 2) 종료 상태 확인
while :; do
  STATUS=$(gcloud compute instances describe "$INSTANCE" --format='value(status)')
  [[ "$STATUS" == "TERMINATED" ]] && break
  sleep 5
done

# 3) Static IP 해제
gcloud compute instances delete-access-config "$INSTANCE" \
  --zone="$ZONE" \
  --network-interface=nic0 \
  --access-config-name="External NAT"
