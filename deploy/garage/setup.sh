#!/bin/sh
# One-shot setup of the compose `s3` profile, run in Garage's network namespace
# with its metadata volume: gives the node a role, creates the bucket and
# imports the archiver's key (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, so both
# sides know it without parsing `garage key create`). Each step is skipped when
# done, so `up` can run it every time.
set -eu
bucket=${S3_BUCKET:?}
key_id=${AWS_ACCESS_KEY_ID:?}
secret=${AWS_SECRET_ACCESS_KEY:?}

node=$(garage node id -q)
node=${node%%@*}
case "$(garage status)" in
*"NO ROLE ASSIGNED"*)
    garage layout assign -z dc1 -c 1G "$node"
    garage layout apply --version 1
    ;;
esac
garage bucket info "$bucket" >/dev/null 2>&1 || garage bucket create "$bucket"
garage key info "$key_id" >/dev/null 2>&1 || garage key import --yes -n wal-archiver "$key_id" "$secret"
garage bucket allow --read --write --owner "$bucket" --key "$key_id"
echo "bucket $bucket ready for key $key_id"
