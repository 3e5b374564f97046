"""Multipart through boto3 (explicit calls) and the rules it must enforce.
Environment: ENDPOINT, KEY, SECRET."""
import hashlib, os

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

ep, key, secret = os.environ["ENDPOINT"], os.environ["KEY"], os.environ["SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="citadel", config=cfg)
MiB = 1024 * 1024

def code_of(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("expected an error")

def check(name, cond):
    if not cond:
        raise AssertionError(name)
    print("ok", name, flush=True)

s3.create_bucket(Bucket="mpbucket")
parts_data = [os.urandom(5 * MiB), os.urandom(5 * MiB + 17), os.urandom(1234)]
up = s3.create_multipart_upload(Bucket="mpbucket", Key="obj", ContentType="video/x-test", Metadata={"a": "b"})["UploadId"]
etags = []
for n, d in enumerate(parts_data, 1):
    r = s3.upload_part(Bucket="mpbucket", Key="obj", UploadId=up, PartNumber=n, Body=d)
    check(f"part {n} etag", r["ETag"].strip('"') == hashlib.md5(d).hexdigest())
    etags.append(r["ETag"])
lp = s3.list_parts(Bucket="mpbucket", Key="obj", UploadId=up)
check("list parts", [p["PartNumber"] for p in lp["Parts"]] == [1, 2, 3] and lp["Parts"][1]["Size"] == 5 * MiB + 17)
lp = s3.list_parts(Bucket="mpbucket", Key="obj", UploadId=up, MaxParts=2)
check("list parts paged", lp["IsTruncated"] and lp["NextPartNumberMarker"] == 2)
check("listed upload", [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="mpbucket")["Uploads"]] == [up])
wrong = [{"PartNumber": 1, "ETag": etags[0]}, {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}, {"PartNumber": 3, "ETag": etags[2]}]
check("wrong etag", code_of(lambda: s3.complete_multipart_upload(Bucket="mpbucket", Key="obj", UploadId=up, MultipartUpload={"Parts": wrong})) == "InvalidPart")
check("nothing stored on wrong etag", code_of(lambda: s3.head_object(Bucket="mpbucket", Key="obj")) in ("404", "NoSuchKey"))
order = [{"PartNumber": 2, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[0]}]
check("part order", code_of(lambda: s3.complete_multipart_upload(Bucket="mpbucket", Key="obj", UploadId=up, MultipartUpload={"Parts": order})) == "InvalidPartOrder")
good = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]
r = s3.complete_multipart_upload(Bucket="mpbucket", Key="obj", UploadId=up, MultipartUpload={"Parts": good})
want_etag = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in parts_data)).hexdigest() + "-3"
check("multipart etag", r["ETag"].strip('"') == want_etag)
whole = b"".join(parts_data)
got = s3.get_object(Bucket="mpbucket", Key="obj")
check("multipart round trip", got["Body"].read() == whole and got["Metadata"] == {"a": "b"} and got["ContentType"] == "video/x-test")
got = s3.get_object(Bucket="mpbucket", Key="obj", Range=f"bytes={5 * MiB - 3}-{5 * MiB + 3}")
check("range across parts", got["Body"].read() == whole[5 * MiB - 3:5 * MiB + 4])
check("upload gone after complete", "Uploads" not in s3.list_multipart_uploads(Bucket="mpbucket"))
# A retried Complete (its first answer lost) is answered again, as S3 does; once the key
# is overwritten, the upload is gone for good.
again = s3.complete_multipart_upload(Bucket="mpbucket", Key="obj", UploadId=up, MultipartUpload={"Parts": good})
check("complete twice: same answer", again["ETag"] == r["ETag"])
s3.put_object(Bucket="mpbucket", Key="obj2", Body=b"other")
s3.copy_object(Bucket="mpbucket", Key="obj", CopySource={"Bucket": "mpbucket", "Key": "obj2"})
check("complete after overwrite", code_of(lambda: s3.complete_multipart_upload(Bucket="mpbucket", Key="obj", UploadId=up, MultipartUpload={"Parts": good})) == "NoSuchUpload")
s3.delete_object(Bucket="mpbucket", Key="obj2")

# Part too small: a 1 MiB part that is not the last.
up = s3.create_multipart_upload(Bucket="mpbucket", Key="small")["UploadId"]
e1 = s3.upload_part(Bucket="mpbucket", Key="small", UploadId=up, PartNumber=1, Body=b"x" * MiB)["ETag"]
e2 = s3.upload_part(Bucket="mpbucket", Key="small", UploadId=up, PartNumber=2, Body=b"y")["ETag"]
check("part too small", code_of(lambda: s3.complete_multipart_upload(Bucket="mpbucket", Key="small", UploadId=up, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})) == "EntityTooSmall")
check("nothing stored on part too small", code_of(lambda: s3.head_object(Bucket="mpbucket", Key="small")) in ("404", "NoSuchKey"))
s3.abort_multipart_upload(Bucket="mpbucket", Key="small", UploadId=up)
check("aborted", code_of(lambda: s3.list_parts(Bucket="mpbucket", Key="small", UploadId=up)) == "NoSuchUpload")
check("abort unknown", code_of(lambda: s3.abort_multipart_upload(Bucket="mpbucket", Key="small", UploadId="nope")) == "NoSuchUpload")
# Conditional PUT: If-None-Match * refuses to overwrite.
check("if-none-match put", code_of(lambda: s3.put_object(Bucket="mpbucket", Key="obj", Body=b"z", IfNoneMatch="*")) == "PreconditionFailed")
print("ALL OK")
