package firmware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"

	"github.com/otad/otad/internal/ota"
)

// S3Config configures the S3 backend.
type S3Config struct {
	Bucket string // required
	// Endpoint is the base URL of an S3-compatible server, such as
	// http://minio:9000; empty means AWS.
	Endpoint string
	// Region defaults to the SDK's chain (AWS_REGION, shared config), then
	// to us-east-1, which S3-compatible servers accept.
	Region string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key; most self-hosted servers need it.
	PathStyle bool
	// AccessKeyID and SecretAccessKey, when both set, replace the SDK's
	// default credential chain (AWS_ACCESS_KEY_ID, shared files, IAM roles).
	AccessKeyID     string
	SecretAccessKey string
	// PartSize is the multipart part size: default and minimum 5 MiB, which
	// allows images up to 48 GiB. An upload buffers up to Concurrency+2
	// parts (the transfer manager's pool and the first part).
	PartSize int64
	// Concurrency is the number of parts sent at once: default 4.
	Concurrency int
	// Logger receives failures to clean up after a failed upload.
	Logger *slog.Logger
}

const (
	// minPartSize is the smallest part S3 takes, but for the last.
	minPartSize        = 5 << 20
	defaultPartSize    = minPartSize
	defaultConcurrency = 4
	cleanupTimeout     = time.Minute
)

// S3 keeps firmware images in an S3-compatible bucket.
type S3 struct {
	client   *s3.Client
	uploader *transfermanager.Client
	bucket   string
	log      *slog.Logger
}

var _ ota.Blobs = (*S3)(nil)

// NewS3 builds the S3 backend. It does not contact the server: call Ping to
// check the bucket is reachable. A configuration that cannot work is
// EINVALID.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, ota.Errorf(ota.EINVALID, "S3 bucket is required")
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return nil, ota.Errorf(ota.EINVALID, "S3 access key ID and secret access key go together")
	}
	if cfg.Endpoint != "" && !strings.HasPrefix(cfg.Endpoint, "http://") && !strings.HasPrefix(cfg.Endpoint, "https://") {
		return nil, ota.Errorf(ota.EINVALID, "S3 endpoint must start with http:// or https://")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	if cfg.PartSize < minPartSize {
		return nil, ota.Errorf(ota.EINVALID, "S3 part size must be at least %d bytes", minPartSize)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = defaultConcurrency
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Otherwise a ranged GET of a multipart object logs a warning that
		// its checksum could not be validated, once per download.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	uploader := transfermanager.New(unsignedUploads{client}, func(o *transfermanager.Options) {
		o.PartSizeBytes = cfg.PartSize
		// Less than one part goes as one PutObject; the default threshold
		// (16 MiB) would buffer more than a part before the first request.
		o.MultipartUploadThreshold = cfg.PartSize
		o.Concurrency = cfg.Concurrency
		// The abort after a failure gets a context of its own, so that a
		// canceled request still leaves no parts behind.
		o.FailTimeout = cleanupTimeout
	})
	return &S3{client: client, uploader: uploader, bucket: cfg.Bucket, log: cfg.Logger}, nil
}

// Ping checks that the bucket exists and the credentials reach it.
func (s *S3) Ping(ctx context.Context) error {
	if _, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}); err != nil {
		return fmt.Errorf("s3 bucket %q: %w", s.bucket, err)
	}
	return nil
}

// Put streams r to key with a multipart upload (a single PutObject when r
// holds less than one part), so r need not be seekable nor its length known,
// and memory stays at Concurrency+2 parts. On any error the multipart
// upload is aborted and the key deleted, so no object and no parts remain.
// An invalid key is EINVALID.
func (s *S3) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := ValidateKey(key); err != nil {
		return 0, err
	}
	// The counting wrapper also hides any Seek or ReadAt of r, so every
	// upload takes the same streaming path.
	cr := &countReader{r: &ctxReader{ctx: ctx, r: r}}
	_, err := s.uploader.UploadObject(ctx, &transfermanager.UploadObjectInput{
		Bucket:      &s.bucket,
		Key:         &key,
		Body:        cr,
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		s.cleanup(ctx, key, err)
		return 0, fmt.Errorf("s3 put: %w", err)
	}
	return cr.n, nil
}

// cleanup makes sure that a failed upload leaves nothing. The transfer
// manager has aborted the multipart upload already unless S3 was
// unreachable at that moment; a second abort costs one request and may
// find S3 back (the sweeper takes what still remains).
func (s *S3) cleanup(ctx context.Context, key string, uploadErr error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var mf transfermanager.MultipartUploadError
	if errors.As(uploadErr, &mf) && mf.UploadID() != "" {
		_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: &s.bucket, Key: &key, UploadId: aws.String(mf.UploadID()),
		})
		if err != nil && !isS3Code(err, "NoSuchUpload") {
			s.log.Error("abort multipart upload", "key", key, "upload_id", mf.UploadID(), "err", err)
		}
	}
	// The failure may have come after the object was complete (a failed
	// CompleteMultipartUpload response may hide a completed one).
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}); err != nil {
		s.log.Error("delete object after failed upload", "key", key, "err", err)
	}
}

// unsignedUploads is the client the transfer manager uploads with: its
// PutObject and UploadPart requests go as UNSIGNED-PAYLOAD, with the CRC32
// checksum header that the transfer manager asks for and S3 verifies (see
// UnsignedPayload).
type unsignedUploads struct{ *s3.Client }

func (c unsignedUploads) PutObject(ctx context.Context, in *s3.PutObjectInput, opts ...func(*s3.Options)) (*s3.PutObjectOutput, error) {
	return c.Client.PutObject(ctx, in, withUnsignedPayload(opts)...)
}

func (c unsignedUploads) UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	return c.Client.UploadPart(ctx, in, withUnsignedPayload(opts)...)
}

// withUnsignedPayload returns a copy of opts (the transfer manager shares
// one slice between its part goroutines) with UnsignedPayload added.
func withUnsignedPayload(opts []func(*s3.Options)) []func(*s3.Options) {
	return append(slices.Clip(opts), func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, UnsignedPayload)
	})
}

// UnsignedPayload is an S3 API option that sends a request's payload
// unsigned (UNSIGNED-PAYLOAD), as otad's uploads do. Over plain http,
// SigV4 hashes every byte with SHA-256 on both ends (the SDK computes it
// beside the CRC32 checksum, before the signer runs, so swapping the
// signer's payload hash middleware alone does not stop it): as much CPU as
// the upload's own SHA-256, for an integrity check that the CRC32 checksum
// S3 verifies and the recorded digests (which devices verify) already
// give. Setting the payload hash first, at the front of the finalize step,
// leaves the checksum middleware only the CRC32 to compute. Over https the
// SDK sends the payload unsigned with a trailing checksum by itself.
func UnsignedPayload(stack *middleware.Stack) error {
	return stack.Finalize.Add(middleware.FinalizeMiddlewareFunc("OtadUnsignedPayload",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			return next.HandleFinalize(v4.SetPayloadHash(ctx, "UNSIGNED-PAYLOAD"), in)
		}), middleware.Before)
}

// List calls fn with every object of the bucket, a page at a time.
func (s *S3) List(ctx context.Context, fn func([]Object) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, MaxKeys: aws.Int32(listBatch)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3 list objects: %w", err)
		}
		batch := make([]Object, 0, len(page.Contents))
		for _, o := range page.Contents {
			if key := aws.ToString(o.Key); ValidateKey(key) == nil { // others are not otad's
				batch = append(batch, Object{Key: key, Modified: aws.ToTime(o.LastModified)})
			}
		}
		if err := fn(batch); err != nil {
			return err
		}
	}
	return nil
}

// RemoveIncomplete aborts the bucket's multipart uploads started before
// before and returns how many it aborted. Put aborts its own on failure,
// but not when the process dies half way, nor when S3 is unreachable at
// that moment; their parts cost storage while invisible. The cut-off must
// be far beyond any real upload, as replicas may be uploading right now.
func (s *S3) RemoveIncomplete(ctx context.Context, before time.Time) (int, error) {
	in := &s3.ListMultipartUploadsInput{Bucket: &s.bucket}
	aborted := 0
	for {
		out, err := s.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return aborted, fmt.Errorf("s3 list multipart uploads: %w", err)
		}
		for _, u := range out.Uploads {
			if u.Initiated == nil || !u.Initiated.Before(before) {
				continue
			}
			_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			if err != nil && !isS3Code(err, "NoSuchUpload") {
				return aborted, fmt.Errorf("s3 abort multipart upload: %w", err)
			}
			aborted++
		}
		if !aws.ToBool(out.IsTruncated) {
			return aborted, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// Open returns up to length bytes of key from offset (length < 0: to the
// end) with a ranged GetObject; a range past the end yields fewer bytes or
// none. A missing key is ENOTFOUND, an invalid key or a negative offset
// EINVALID.
func (s *S3) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, ota.Errorf(ota.EINVALID, "negative offset")
	}
	if length == 0 {
		// "bytes=N-(N-1)" does not exist; still say whether the key does.
		if _, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key}); err != nil {
			return nil, s.openError(err)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	in := &s3.GetObjectInput{Bucket: &s.bucket, Key: &key}
	switch {
	case length > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+length-1))
	case offset > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		if httpStatus(err) == http.StatusRequestedRangeNotSatisfiable || isS3Code(err, "InvalidRange") {
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, s.openError(err)
	}
	return out.Body, nil
}

func (s *S3) openError(err error) error {
	if isS3Code(err, "NoSuchKey") || isS3Code(err, "NotFound") || httpStatus(err) == http.StatusNotFound {
		return ota.Errorf(ota.ENOTFOUND, "firmware image not found")
	}
	return fmt.Errorf("s3 get: %w", err)
}

// Delete removes key; a missing key is no error, an invalid one EINVALID.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}); err != nil {
		return fmt.Errorf("s3 delete: %w", err)
	}
	return nil
}

func isS3Code(err error, code string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == code
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
